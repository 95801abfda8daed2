"""Cut glomerulus crops and masks from slides along QuPath outlines into a normal glomlib dataset.

Each crop is the outline's bounding box plus ``context`` (a share of the box on each side), or with ``size`` an
N x N square at the target MPP centred on the box. It is read from the coarsest pyramid level that is not coarser
than the target MPP (coordinates stay level-0 pixels), resampled only when that level's MPP differs from the
target by more than 1 %, white outside the slide. The mask is rasterised from the outline (pixel-centre rule,
holes kept). A crop is written once, atomically, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glomlib.core.io import write_text_atomic, write_with
from glomlib.slides.annotations import Outline, load_annotations, rasterize
from glomlib.slides.read import Slide, open_slide

MPP_TOLERANCE = 0.01  # a level within 1 % of the target MPP is used as is (no resampling)


@dataclass(frozen=True)
class ExtractOptions:
    target_mpp: float | None = None  # None: each slide's own (native) MPP
    context: float = 0.25  # share of the outline's box added on each side
    size: int = 0  # > 0: N x N crops at the target MPP centred on the outline (context unused)
    reader: str = "tiffslide"
    classes: str = ""  # classes file (QuPath class name -> label)


@dataclass(frozen=True)
class CropPlan:
    level: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in level-0 pixels (annotation frame)
    read_size: tuple[int, int]  # (w, h) read from ``level``
    out_size: tuple[int, int]  # (w, h) saved
    mpp: float  # of the saved crop


def pick_level(slide: Slide, target_mpp: float) -> int:
    """The coarsest level whose MPP is not coarser than ``target_mpp`` (within 1 %), else level 0."""
    ok = [i for i in range(len(slide.level_downsamples)) if slide.level_mpp(i) <= target_mpp * (1 + MPP_TOLERANCE)]
    return max(ok, key=slide.level_mpp) if ok else 0


def plan_crop(slide: Slide, geom: Any, opts: ExtractOptions) -> CropPlan:
    """Where to read one outline's crop from and at which size to save it."""
    mpp0 = float(slide.mpp)
    target = opts.target_mpp or mpp0
    minx, miny, maxx, maxy = geom.bounds
    level = pick_level(slide, target)
    ds, lmpp = slide.level_downsamples[level], slide.level_mpp(level)
    resample = abs(lmpp / target - 1) > MPP_TOLERANCE
    if opts.size > 0:  # a square of opts.size pixels at the target MPP, snapped to the level's pixel grid
        lw = lh = max(1, round(opts.size * target / lmpp))
        lx0, ly0 = round((minx + maxx) / 2 / ds - lw / 2), round((miny + maxy) / 2 / ds - lh / 2)
    else:
        cw, ch = opts.context * (maxx - minx), opts.context * (maxy - miny)
        lx0, ly0 = math.floor((minx - cw) / ds), math.floor((miny - ch) / ds)
        lw, lh = max(1, math.ceil((maxx + cw) / ds) - lx0), max(1, math.ceil((maxy + ch) / ds) - ly0)
    box = (round(lx0 * ds), round(ly0 * ds), round((lx0 + lw) * ds), round((ly0 + lh) * ds))
    if not resample:
        out = (lw, lh)
    elif opts.size > 0:
        out = (opts.size, opts.size)
    else:
        out = (max(1, round((box[2] - box[0]) * mpp0 / target)), max(1, round((box[3] - box[1]) * mpp0 / target)))
    return CropPlan(level, box, (lw, lh), out, (box[2] - box[0]) * mpp0 / out[0])


def cut(slide: Slide, outline: Outline, plan: CropPlan) -> tuple[np.ndarray, np.ndarray]:
    """The RGB crop and its boolean mask for ``plan``."""
    import cv2

    img = slide.read(plan.box[0], plan.box[1], *plan.read_size, level=plan.level)
    if plan.out_size != plan.read_size:
        interp = cv2.INTER_AREA if plan.out_size[0] < plan.read_size[0] else cv2.INTER_LINEAR
        img = cv2.resize(img, plan.out_size, interpolation=interp)
    mask = rasterize(outline.geometry, plan.box, (plan.out_size[1], plan.out_size[0]))
    return img, mask


def safe_name(s: str) -> str:
    """A file name for an id or slide; a changed name gets a short hash so that two ids never collide."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", str(s)).strip("._") or "x"
    if clean == s:
        return clean
    import hashlib

    return f"{clean[:80]}-{hashlib.sha1(str(s).encode()).hexdigest()[:8]}"


def _write_png(path: Path, arr: np.ndarray) -> None:
    import cv2

    a = arr[:, :, ::-1] if arr.ndim == 3 else arr.astype(np.uint8) * 255
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    write_with(path, lambda tmp: tmp.write_bytes(buf.tobytes()))


def outlines_geojson(slide: str, outlines: list[Outline]) -> dict:
    """The outlines as a FeatureCollection (the export's source of geometry)."""
    import shapely

    feats = [
        {
            "type": "Feature",
            "id": o.id,
            "geometry": json.loads(shapely.to_geojson(o.geometry)),
            "properties": {
                "objectType": o.object_type,
                "classification": {"name": o.name} if o.name else None,
                "label": o.label,
                "slide": slide,
            },
        }
        for o in outlines
    ]
    return {"type": "FeatureCollection", "features": feats}


def extract_slide(
    job: dict, out: Path, opts: ExtractOptions, classes: dict | None, tick: Callable[[int], None] = lambda n: None
) -> tuple[list[dict], dict]:
    """Cut every outline of one slide (``job``: a slides CSV row); return its manifest rows and counts."""
    name = job["slide"]
    ann = load_annotations(job["annotations"], name, classes)
    slide = open_slide(job["wsi"], opts.reader, name=name, mpp=job.get("mpp"))
    rows, written, extra = [], 0, {k: job[k] for k in ("biopsy", "patient", "center") if job.get(k, "") != ""}
    sdir = safe_name(name)
    try:
        write_text_atomic(out / "outlines" / f"{sdir}.geojson", json.dumps(outlines_geojson(name, ann.outlines)))
        for o in ann.outlines:
            plan = plan_crop(slide, o.geometry, opts)
            rel, mrel = f"crops/{sdir}/{safe_name(o.id)}.png", f"masks/{sdir}/{safe_name(o.id)}.png"
            if not ((out / rel).is_file() and (out / mrel).is_file()):  # resume: a crop is written once
                img, mask = cut(slide, o, plan)
                _write_png(out / mrel, mask)
                _write_png(out / rel, img)
                written += 1
            rows.append(
                {
                    "path": rel,
                    "label": o.label,
                    "slide": name,
                    "mask": mrel,
                    "annotation_id": o.id,
                    "x0": plan.box[0],
                    "y0": plan.box[1],
                    "x1": plan.box[2],
                    "y1": plan.box[3],
                    "level": plan.level,
                    "mpp": round(plan.mpp, 6),
                    **extra,
                }
            )
            tick(1)
    finally:
        slide.close()
    counts = {
        "outlines": len(ann.outlines),
        "written": written,
        "repaired": len(ann.repaired),
        "skipped_objects": dict(ann.skipped),
        "reader": slide.reader,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
    }
    return rows, counts


def options_dict(opts: ExtractOptions) -> dict:
    return asdict(opts)
