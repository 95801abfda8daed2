"""The study's scale, measured: cache build / cache read / SimCLR loader images/s and peak RSS for 1k / 4k / 13k
patches at 512 px, against what one H100 SimCLR step on ResNet-50 at 512 px would consume (an estimate).

    nice -n 5 .venv/bin/python benchmarks/scale.py [--sizes 1000 4000 13231] [--image-size 512]

THROUGHPUT TEST, NOT DATA: the 13,231 "patches" are augmented copies (flips, 90-degree rotations, crop, colour
shift) of the 794 real glomeruli-pas patches, written as PNGs into a temporary folder (``--work``) and deleted
afterwards. Nothing measured here says anything about glomeruli; it says how the cache and the loader scale.

Every measurement runs in its own subprocess, so its peak RSS (``resource.getrusage``, the process and, for the
loader, its worker processes) belongs to that measurement alone. The cache is a uint8 memmap: peak RSS should
stay flat as the set grows (the pages are file-backed and evictable, so they are not counted as private memory
growth the way a Python list of arrays would be).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

#: ResNet-50 training throughput on one H100 at 224 px with bf16/AMP, images/s: the order of magnitude of NVIDIA's
#: published DeepLearningExamples figures for ResNet-50 v1.5 (an ESTIMATE; pass --h100-ips-224 to change it).
H100_RESNET50_224_IPS = 3000.0


def _status_mib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process, MiB: ``VmHWM`` (reset at exec) where Linux has it, else
    ``resource.getrusage`` (whose ru_maxrss keeps the *parent's* peak across fork+exec, so it would report the
    launcher's memory, not this measurement's). ``children``: also the loader's worker processes (getrusage)."""
    r = _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if children:
        r = max(r, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return r


def rss_anon_mib() -> float:
    """This process's private (anonymous) resident memory now, MiB (Linux; 0 elsewhere)."""
    return _status_mib("RssAnon")


# ----------------------------------------------------------------------------------------- child processes
def child_build(paths_file: str, n: int, size: int, cache_dir: str, workers: int) -> dict:
    from glomlib.data.cache import load_images

    paths = Path(paths_file).read_text().splitlines()[:n]
    t = time.perf_counter()
    arr = load_images(paths, size, cache_dir=cache_dir, workers=workers)
    secs = time.perf_counter() - t
    return {
        "images_per_s": n / secs,
        "seconds": secs,
        "peak_rss_mib": peak_rss_mib(),
        "cache_gib": arr.nbytes / 2**30,
        "peak_anon_mib": rss_anon_mib(),
    }


def child_read(paths_file: str, n: int, size: int, cache_dir: str) -> dict:
    from glomlib.data.cache import load_images

    paths = Path(paths_file).read_text().splitlines()[:n]
    arr = load_images(paths, size, cache_dir=cache_dir)
    t = time.perf_counter()
    s, anon = 0, 0.0
    for i in range(0, n, 64):  # every image from the memmap into RAM, in loader-sized chunks
        s += int(np.array(arr[i : i + 64])[:, ::64, ::64].sum())
        anon = max(anon, rss_anon_mib())
    secs = time.perf_counter() - t
    return {
        "images_per_s": n / secs,
        "seconds": secs,
        "peak_rss_mib": peak_rss_mib(),
        "peak_anon_mib": anon,
        "checksum": s,
    }


def child_loader(
    paths_file: str, n: int, size: int, cache_dir: str, workers: int, batch: int, n_batches: int, clahe_p: float
) -> dict:
    import torch

    from glomlib.data.cache import load_images
    from glomlib.train import simclr as ssl

    torch.set_num_threads(1)
    paths = Path(paths_file).read_text().splitlines()[:n]
    arr = load_images(paths, size, cache_dir=cache_dir)
    cfg = ssl.SSLConfig.from_params(image_size=size, batch_size=batch, clahe_p=clahe_p)
    source = ssl.PairSource(arr, cfg.augment_params(), cfg.seed)
    batches = ssl.epoch_batches(n, batch, 0, cfg.seed, max_steps=n_batches)
    loader = ssl.make_loader(source, batches, 0, workers, pin=False)
    seen, anon, t = 0, 0.0, 0.0
    for i, (s0, s1) in enumerate(loader):  # timed from the first batch on (worker start-up excluded)
        assert s0.dtype == torch.uint8 and s0.shape == s1.shape == (batch, size, size, 3)
        if i == 0:
            t = time.perf_counter()
            continue
        seen += len(s0)
        anon = max(anon, rss_anon_mib())
    secs = time.perf_counter() - t
    return {
        "images_per_s": seen / secs,
        "seconds": secs,
        "peak_rss_mib": peak_rss_mib(children=True),
        "peak_anon_mib": anon,
        "batches": len(batches),
    }


def run_child(*args: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- the scale-test set
def make_scale_set(n: int, size: int, folder: Path, workers: int, unique: int) -> list[str]:
    """``n`` PNGs at ``size`` px: ``unique`` augmented copies of the real patches (throughput test, not data); the
    other files are hard links to them (each still decoded on its own by the cache build: the decode is what is
    measured, and writing 13k PNGs on a shared 2-core machine would take most of an hour)."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from glomlib.core.paths import chdir_project_root
    from glomlib.data.cache import load_images
    from glomlib.data.manifest import read_manifest
    from glomlib.data.public import ensure_default_manifest

    chdir_project_root()
    df = read_manifest(ensure_default_manifest(), require_labels=False)
    real = load_images(df["path"].tolist(), size)  # decoded once (the project's cache)
    folder.mkdir(parents=True, exist_ok=False)
    (folder / "README.txt").write_text(
        "THROUGHPUT TEST, NOT DATA: augmented copies of the glomeruli-pas patches, "
        "written by benchmarks/scale.py and deleted after it. CC BY-NC-SA source.\n"
    )

    def one(i: int) -> str:
        rng = np.random.default_rng(i)
        im = np.asarray(real[i % len(real)])
        im = np.rot90(im, int(rng.integers(4)))
        if rng.random() < 0.5:
            im = im[:, ::-1]
        c = int(rng.integers(0, size // 8))
        im = cv2.resize(
            np.ascontiguousarray(im[c : size - c, c : size - c]), (size, size), interpolation=cv2.INTER_AREA
        )
        shift = rng.integers(-12, 13, size=3)
        im = np.clip(im.astype(np.int16) + shift, 0, 255).astype(np.uint8)
        p = folder / f"scale-{i:05d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        return str(p)

    with ThreadPoolExecutor(workers) as ex:
        made = list(ex.map(one, range(min(n, unique))))
    paths = list(made)
    for i in range(len(made), n):
        p = folder / f"scale-{i:05d}.png"
        try:
            os.link(made[i % len(made)], p)
        except OSError:
            shutil.copyfile(made[i % len(made)], p)
        paths.append(str(p))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 13231])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--workers", nargs="+", default=["0", "1", "2", "all"], help="loader worker counts")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--loader-batches", type=int, default=8, help="batches per loader measurement (the first is not timed)"
    )
    ap.add_argument("--clahe-p", type=float, default=0.5)
    ap.add_argument(
        "--work", default="", help="folder for the scale-test set and caches (default: a temp folder under data/)"
    )
    ap.add_argument("--keep", action="store_true", help="do not delete the generated set")
    ap.add_argument("--unique", type=int, default=1500, help="distinct augmented PNGs; the rest are hard links")
    ap.add_argument("--h100-ips-224", type=float, default=H100_RESNET50_224_IPS)
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        fn = {"build": child_build, "read": child_read, "loader": child_loader}[kind]
        conv = [
            int(x) if x.lstrip("-").isdigit() else (float(x) if x.replace(".", "", 1).isdigit() else x) for x in rest
        ]
        print(json.dumps(fn(*conv)))
        return 0

    from glomlib.core import runtime

    cores = os.cpu_count() or 1
    S = a.image_size
    n_max = max(a.sizes)
    per_img = S * S * 3
    need = n_max * per_img * 2.2  # cache + PNGs (PNG level 1 is about 1.1-1.2x raw) with margin
    base = Path(a.work) if a.work else ROOT / "data"
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free
    sizes = list(a.sizes)
    if need > free * 0.8:
        fit = int(free * 0.8 / (per_img * 2.2))
        print(
            f"DISK: {n_max} x {S} px needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free at {base}: the largest "
            f"size is scaled down to {fit}."
        )
        sizes = sorted({min(s, fit) for s in sizes})
        n_max = max(sizes)
    work = Path(tempfile.mkdtemp(prefix="scale-test-THROUGHPUT-ONLY-", dir=base))
    print(
        f"CPU: {runtime.cpu_model()} ({cores} cores); disk free at {base}: {free / 2**30:.1f} GiB; "
        f"work folder {work} (THROUGHPUT TEST, NOT DATA; deleted at the end)",
        flush=True,
    )
    rows = []
    try:
        t = time.perf_counter()
        paths = make_scale_set(n_max, S, work / "patches", min(4, cores), a.unique)
        print(
            f"scale-test set: {len(paths)} PNGs at {S} px ({min(a.unique, n_max)} distinct augmented copies of the "
            f"real patches, the rest hard links) in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        paths_file = work / "paths.txt"
        paths_file.write_text("\n".join(paths))
        for n in sizes:
            cache_dir = work / f"cache-{n}"
            b = run_child("build", str(paths_file), str(n), str(S), str(cache_dir), str(cores))
            r = run_child("read", str(paths_file), str(n), str(S), str(cache_dir))
            row = {
                "n": n,
                "build_ips": b["images_per_s"],
                "build_rss_mib": b["peak_rss_mib"],
                "cache_gib": b["cache_gib"],
                "read_ips": r["images_per_s"],
                "read_rss_mib": r["peak_rss_mib"],
                "read_anon_mib": r["peak_anon_mib"],
                "loader": {},
            }
            for w in a.workers:
                wn = cores if w == "all" else int(w)
                lo = run_child(
                    "loader",
                    str(paths_file),
                    str(n),
                    str(S),
                    str(cache_dir),
                    str(wn),
                    str(a.batch_size),
                    str(a.loader_batches),
                    str(a.clahe_p),
                )
                row["loader"][f"{w}" if w != "all" else f"all={cores}"] = lo
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items()}, default=float), flush=True)
            shutil.rmtree(cache_dir, ignore_errors=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
            print(f"deleted {work}")
    views = a.h100_ips_224 * (224 / S) ** 2
    need_src = views / 2
    print(
        f"\nScale test at {S} px on CPU {runtime.cpu_model()} ({cores} cores). THROUGHPUT TEST on augmented copies "
        f"of the real patches, not data."
    )
    wl = list(rows[0]["loader"])
    hdr = (
        "| patches | cache build img/s | build peak RSS MiB | cache GiB | cache read img/s | read peak RSS MiB "
        "(private) | " + " | ".join(f"loader w={w} img/s" for w in wl) + " | loader peak RSS MiB (max) |"
    )
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        lo = r["loader"]
        print(
            f"| {r['n']:,} | {r['build_ips']:,.0f} | {r['build_rss_mib']:,.0f} | {r['cache_gib']:.1f} | "
            f"{r['read_ips']:,.0f} | {r['read_rss_mib']:,.0f} ({r['read_anon_mib']:,.0f}) | "
            + " | ".join(f"{lo[w]['images_per_s']:,.1f}" for w in wl)
            + f" | {max(v['peak_rss_mib'] for v in lo.values()):,.0f} |"
        )
    best = max(max(v["images_per_s"] for v in r["loader"].values()) for r in rows)
    print(
        f"\nOne H100, ResNet-50 SimCLR at {S} px (ESTIMATE: {a.h100_ips_224:,.0f} images/s at 224 px bf16 training, "
        f"scaled by pixel count -> {views:,.0f} views/s = {need_src:,.0f} source images/s, two views each)."
    )
    print(
        f"Best loader here: {best:,.1f} source images/s on {cores} cores = {best / need_src:.2f}x what that step "
        f"consumes; per core {best / max(1, cores):,.1f} images/s -> about {need_src / max(best / max(1, cores), 1e-9):.0f}"
        f" loader cores to keep one H100 fed."
    )
    print(
        "Peak RSS (VmHWM) counts the memmap's file-backed pages a process has touched (the OS may evict them at "
        "any time); 'private' is the anonymous memory, sampled while reading."
    )
    rss = [r["build_rss_mib"] for r in rows]
    print(
        f"Peak RSS of the cache build over sizes: {', '.join(f'{x:,.0f}' for x in rss)} MiB "
        f"({'flat' if max(rss) < 1.5 * min(rss) else 'NOT flat'}: max/min {max(rss) / min(rss):.2f})."
    )
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "cpu": runtime.cpu_model(),
                    "cores": cores,
                    "image_size": S,
                    "rows": rows,
                    "h100_ips_224_estimate": a.h100_ips_224,
                },
                indent=2,
                default=float,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
