"""Slide extraction benchmark: crops/s and peak memory cutting glomerulus crops from a 40,000 x 40,000 pyramidal
TIFF with 2,000 outlines, against reading the same regions with plain tifffile (zarr) and OpenSlide calls.

    flock /tmp/glomlib-cpu.lock .venv/bin/python benchmarks/slides.py [--side 40000] [--outlines 2000]

The slide (JPEG tiles of 512 px, 0.25 um/px, 5 levels, written once into --work) holds textured tissue; the
outlines are seeded random ellipses (radius 60-180 px). Every measurement runs in its own process, so its peak
resident memory (VmHWM) is its own: the full extraction (read + mask + PNG + manifest) with 1/4 and all of the
outlines shows whether memory stays flat in the number of outlines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MPP, TILE, LEVELS = 0.25, 512, 5


def _tiles(side: int, level: int, seed: int = 0):
    """Tiles of ``level`` row by row: a few textured tissue tiles reused (JPEG-encoded each time)."""
    rng = np.random.default_rng(seed + level)
    base = [np.clip(rng.normal(200, 25, (TILE, TILE, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    for b in base:
        b[::7] = (170, 90, 150)  # PAS-like pink lines, so tiles are not flat
    n = math.ceil(side / 2**level / TILE)
    for i in range(n * n):
        yield base[i % 4]


def write_slide(path: Path, side: int) -> None:
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for lv in range(LEVELS):
            s = math.ceil(side / 2**lv)
            tw.write(
                _tiles(side, lv),
                shape=(s, s, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1 if lv else 0,
                resolutionunit="CENTIMETER",
                resolution=(1e4 / (MPP * 2**lv),) * 2,
            )


def write_outlines(path: Path, side: int, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    feats = []
    for i in range(n):
        cx, cy = rng.uniform(400, side - 400, 2)
        rx, ry = rng.uniform(60, 180, 2)
        ring = [[float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))] for a in t]
        feats.append(
            {
                "type": "Feature",
                "id": f"o{i:05d}",
                "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
                "properties": {"classification": {"name": "nonGS" if i % 3 else "GS"}},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def _boxes(geojson: Path) -> list[tuple[int, int, int, int]]:
    """The crop boxes glomlib cuts (outline box + 25 % context), for the plain readers."""
    out = []
    for f in json.loads(geojson.read_text())["features"]:
        xy = np.asarray(f["geometry"]["coordinates"][0])
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        cw, ch = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
        out.append((math.floor(x0 - cw), math.floor(y0 - ch), math.ceil(x1 + cw), math.ceil(y1 + ch)))
    return out


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, slide: Path, geojson: Path, out: Path) -> dict:
    """One measurement in this process: crops, seconds, peak MB."""
    boxes = _boxes(geojson)
    import tifffile  # imports before the clock starts: every reader pays only for opening and reading
    import zarr

    from glomlib.slides import ExtractOptions, extract_dataset
    from glomlib.slides.read import open_slide

    t = time.perf_counter()
    if kind == "tifffile":
        z = zarr.open(tifffile.imread(slide, aszarr=True, level=0), mode="r")
        for x0, y0, x1, y1 in boxes:
            np.asarray(z[y0:y1, x0:x1])
    elif kind == "openslide":
        import openslide

        s = openslide.OpenSlide(str(slide))
        for x0, y0, x1, y1 in boxes:
            np.asarray(s.read_region((x0, y0), 0, (x1 - x0, y1 - y0)))
    elif kind.startswith("glomlib-read"):
        s = open_slide(slide, kind.split(":")[1])
        for x0, y0, x1, y1 in boxes:
            s.read(x0, y0, x1 - x0, y1 - y0)
    else:  # the full extraction: read + mask + PNG + outlines + manifest + dataset.json (+ slide sha256)
        csv = out.with_suffix(".csv")
        csv.write_text(f"slide,wsi,annotations\nbench,{slide},{geojson}\n")
        extract_dataset(
            csv, out, ExtractOptions(reader=kind.split(":")[1]), workers=1, progress=False, log=lambda s: None
        )
    return {"kind": kind, "crops": len(boxes), "seconds": time.perf_counter() - t, "peak_mb": _peak_mb()}


def run_child(kind: str, slide: Path, geojson: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--slide",
        str(slide),
        "--geojson",
        str(geojson),
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if r.returncode:
        raise SystemExit(f"{kind} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} CPUs"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def report(results: list[dict], baseline: dict) -> None:
    print(f"CPU: {cpu_model()}; Python {platform.python_version()}")
    print(f"{'measurement':32s} {'crops':>6s} {'crops/s':>9s} {'vs tifffile':>12s} {'peak MB':>8s}")
    for r in results:
        rate = r["crops"] / r["seconds"]
        print(
            f"{r['kind']:32s} {r['crops']:6d} {rate:9.1f} {rate / (baseline['crops'] / baseline['seconds']):11.2f}x"
            f" {r['peak_mb']:8.0f}"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=40000)
    ap.add_argument("--outlines", type=int, default=2000)
    ap.add_argument("--work", default="/tmp/glomlib-bench-slides", help="folder for the slide and outputs")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--slide", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--geojson", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Path(args.slide), Path(args.geojson), Path(args.out))))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"slide{args.side}.tif"
    if not slide.exists():
        t = time.perf_counter()
        write_slide(slide, args.side)
        print(f"wrote {slide} ({slide.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    small, full = work / "quarter.geojson", work / "all.geojson"
    write_outlines(small, args.side, args.outlines // 4)
    write_outlines(full, args.side, args.outlines)
    import shutil

    kinds = [
        ("tifffile", full),
        ("glomlib-read:tiffslide", full),
        ("extract:tiffslide", small),
        ("extract:tiffslide", full),
    ]
    try:
        import openslide  # noqa: F401

        kinds[1:1] = [("openslide", full), ("glomlib-read:openslide", full)]
    except ImportError:
        print("openslide-bin not installed: OpenSlide rows left out")
    results = []
    for i, (kind, gj) in enumerate(kinds):
        out = work / f"out{i}"
        shutil.rmtree(out, ignore_errors=True)
        results.append(run_child(kind, slide, gj, out))
        print(f"  {kind}: {results[-1]['crops']} crops in {results[-1]['seconds']:.1f} s", flush=True)
    report(results, results[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
