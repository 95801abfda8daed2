"""A slides CSV in, a glomlib dataset out: DIR/manifest.csv, DIR/dataset.json, crops, masks, outlines.

SLIDES_CSV columns: ``slide, wsi, annotations`` and optional ``biopsy, patient, center, mpp`` (paths relative to
the CSV's folder). Every slide is checked before anything is cut (file, format, MPP, annotations, outlines inside
the slide); any problem stops the run with one message naming each slide and annotation, and nothing is cut.
Several slides are read in parallel threads (the decoders release the GIL); one progress bar counts crops.
"""

from __future__ import annotations

import datetime as _dt
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from glomlib.core.io import write_csv_atomic
from glomlib.data.manifest import file_sha256, read_dataset_info, write_dataset_info
from glomlib.slides.annotations import AnnotationError, load_annotations, read_classes
from glomlib.slides.extract import ExtractOptions, extract_slide, options_dict
from glomlib.slides.read import SlideError, open_slide, reader_version

REQUIRED = ("slide", "wsi", "annotations")
OPTIONAL = ("biopsy", "patient", "center", "mpp")
MANIFEST_COLUMNS = ("path", "label", "slide", "mask", "annotation_id", "x0", "y0", "x1", "y1", "level", "mpp")


def read_slides_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The slides CSV as a list of jobs with absolute paths and a float ``mpp`` (None when empty)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SlideError(f"slides CSV {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise SlideError(
            f"slides CSV {path} lacks column(s) {', '.join(missing)} (needs {', '.join(REQUIRED)}; "
            f"optional {', '.join(OPTIONAL)})"
        )
    dup = sorted(df["slide"][df["slide"].duplicated()].unique())
    if dup or (df["slide"].str.strip() == "").any():
        raise SlideError(f"slides CSV {path}: slide names must be unique and non-empty (repeated: {dup})")
    jobs = []
    for r in df.to_dict("records"):
        job = {k: str(r.get(k, "")).strip() for k in REQUIRED + OPTIONAL}
        for k in ("wsi", "annotations"):
            job[k] = str((path.parent / job[k]).resolve()) if job[k] else ""
        try:
            job["mpp"] = float(job["mpp"]) if job["mpp"] else None
        except ValueError:
            raise SlideError(f"slide {job['slide']}: mpp {job['mpp']!r} in {path} is not a number") from None
        jobs.append(job)
    if not jobs:
        raise SlideError(f"slides CSV {path} has no rows")
    return jobs


def check_slide(job: dict, opts: ExtractOptions, classes: dict | None) -> tuple[list[str], int]:
    """Problems of one slide (each names the slide and annotation) and its number of outlines."""
    name = job["slide"]
    try:
        slide = open_slide(job["wsi"], opts.reader, name=name, mpp=job.get("mpp")) if job["wsi"] else None
    except SlideError as e:
        return [str(e)], 0
    if slide is None:
        return [f"slide {name}: no wsi file given"], 0
    try:
        if slide.mpp is None:
            return [
                f"slide {name}: MPP unknown ({slide.mpp_source}); nothing cut. Give it in an 'mpp' column of "
                "the slides CSV (micrometres per pixel at level 0)"
            ], 0
        try:
            ann = load_annotations(job["annotations"], name, classes)
        except AnnotationError as e:
            return [str(e)], 0
        fw, fh = slide.frame_size()
        bad = [o.id for o in ann.outlines if not o.geometry.intersects(_box(0, 0, fw, fh))]
        problems = [f"slide {name}: annotation {i} lies outside the slide ({fw} x {fh} px)" for i in bad[:20]]
        return problems + ([f"slide {name}: ... {len(bad) - 20} more outside"] if len(bad) > 20 else []), len(
            ann.outlines
        )
    finally:
        slide.close()


def _box(x0: float, y0: float, x1: float, y1: float) -> Any:
    import shapely

    return shapely.box(x0, y0, x1, y1)


def _check_resume(out: Path, options: dict) -> None:
    info = read_dataset_info(out / "manifest.csv")
    old = (info.get("slides") or {}).get("options")
    if old is not None and old != options:
        changed = {k: (old.get(k), v) for k, v in options.items() if old.get(k) != v}
        raise SlideError(
            f"{out} was extracted with other options {changed} (old, new); resume with the same "
            "options or choose a new --out"
        )


def _positive(labels: set[str], positive_label: str) -> tuple[str, str]:
    labels = labels - {""}
    pos = positive_label or next((p for p in ("GS", "M1", "E1", "S1", "C1") if p in labels), "")
    others = sorted(labels - {pos})
    return pos, others[0] if len(others) == 1 else ""


def extract_dataset(
    slides_csv: str | os.PathLike,
    out: str | os.PathLike,
    opts: ExtractOptions | None = None,
    *,
    workers: int = 2,
    positive_label: str = "",
    progress: bool = True,
    log=print,
) -> Path:
    """Extract every slide of ``slides_csv`` into ``out``; return the path of ``out/manifest.csv``."""
    from tqdm.auto import tqdm

    opts = opts or ExtractOptions()
    out = Path(out).expanduser().resolve()
    jobs = read_slides_csv(slides_csv)
    classes = read_classes(opts.classes)
    _check_resume(out, options_dict(opts))
    checks = [check_slide(j, opts, classes) for j in jobs]
    problems = [p for ps, _ in checks for p in ps]
    if problems:
        raise SlideError(
            f"{len(problems)} problem(s) in {slides_csv}; nothing was cut:\n  - " + "\n  - ".join(problems)
        )
    bar = tqdm(total=sum(n for _, n in checks), unit="crop", desc="slides extract", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        results = list(pool.map(lambda j: extract_slide(j, out, opts, classes, bar.update), jobs))
    bar.close()
    rows = [r for rs, _ in results for r in rs]
    df = pd.DataFrame(rows)
    cols = list(MANIFEST_COLUMNS) + [c for c in ("biopsy", "patient", "center") if c in df.columns]
    manifest = write_csv_atomic(df.reindex(columns=cols).fillna(""), out / "manifest.csv")
    for j, (_, c) in zip(jobs, results):
        log(
            f"slide {j['slide']}: {c['outlines']} crop(s) ({c['written']} new), mpp {c['mpp']:.4g} from "
            f"{c['mpp_source']}"
            + (f", {c['repaired']} self-intersecting repaired" if c["repaired"] else "")
            + (f", skipped non-polygon objects {c['skipped_objects']}" if c["skipped_objects"] else "")
        )
    _write_info(manifest, jobs, results, opts, positive_label, set(df["label"]) if len(df) else set())
    return manifest


def _write_info(
    manifest: Path, jobs: list[dict], results: list, opts: ExtractOptions, positive_label: str, labels: set[str]
) -> Path:
    pos, neg = _positive(labels, positive_label)
    slides = {
        j["slide"]: {
            "wsi": j["wsi"],
            "annotations": j["annotations"],
            "sha256": file_sha256(j["wsi"]),
            "annotations_sha256": file_sha256(j["annotations"]),
            **{k: c[k] for k in ("outlines", "repaired", "skipped_objects", "mpp", "mpp_source")},
        }
        for j, (_, c) in zip(jobs, results)
    }
    prov = {
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "reader": opts.reader,
        "reader_version": reader_version(opts.reader),
        "options": options_dict(opts),
        "slides": slides,
    }
    return write_dataset_info(manifest, pos, neg, slides=prov)
