"""``glomlib slides ...``: whole-slide images and QuPath outlines in, a glomlib dataset out, predictions back.

    glomlib slides inspect SLIDE [--reader R] [--mpp X]
    glomlib slides extract SLIDES_CSV --out DIR [--target-mpp X] [--context F] [--size N] [--reader R]
    glomlib slides export PREDICTIONS_CSV --manifest DIR/manifest.csv --out GEOJSON_DIR

A slide, annotation or prediction problem exits 1 naming the slide and annotation; an output that would be
overwritten exits 3 (glomlib.cli's exit-code table).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Literal

import annotated_types as at
import tyro

from glomlib.core.config import NonNegativeInt, PositiveFloat, PositiveInt, StepConfig

Reader = Literal["tiffslide", "openslide"]


@dataclasses.dataclass(frozen=True)
class InspectConfig(StepConfig):
    """Levels, dimensions, MPP and where it came from, bounds offset of a slide."""

    # fmt: off
    slide: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SLIDE")]  # slide file (.svs, .tif, .ndpi, .mrxs ...)
    reader: Reader = "tiffslide"  # slide reader
    mpp: PositiveFloat | None = None  # override the MPP (um/px at level 0)
    json: bool = False  # print JSON
    # fmt: on


@dataclasses.dataclass(frozen=True)
class ExtractConfig(StepConfig):
    """Cut crops + masks along QuPath outlines into DIR/manifest.csv (a glomlib dataset)."""

    # fmt: off
    slides_csv: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SLIDES_CSV")]  # CSV with columns slide,wsi,annotations[,biopsy,patient,center,mpp]
    out: str  # output folder (an interrupted run resumes in it)
    target_mpp: PositiveFloat | None = None  # um/px of the crops (default: each slide's own)
    context: Annotated[float, at.Ge(0)] = 0.25  # share of the outline's box added on each side
    size: NonNegativeInt = 0  # N x N crops at the target MPP centred on the outline instead of box + context (0: box + context)
    reader: Reader = "tiffslide"  # slide reader
    classes: str = ""  # JSON {class: label} or CSV name,label mapping QuPath classes
    workers: PositiveInt = 2  # slides read in parallel
    positive_label: str = ""  # positive class for dataset.json (default GS or M1 if present)
    no_progress: bool = False  # no progress bar
    # fmt: on


@dataclasses.dataclass(frozen=True)
class ExportConfig(StepConfig):
    """Predictions -> one QuPath GeoJSON per slide + a per-biopsy table."""

    # fmt: off
    predictions: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PREDICTIONS_CSV")]  # predictions CSV of glomlib predict on the slides manifest
    manifest: str  # DIR/manifest.csv written by glomlib slides extract
    out: str  # folder for <slide>.geojson, biopsies.csv, review.csv
    object_type: Literal["annotation", "detection"] = "annotation"  # QuPath object type of the exported outlines
    model: str = ""  # the model.safetensors that predicted: its threshold, positive label and whether its probabilities are calibrated
    threshold: Annotated[float, at.Ge(0), at.Le(1)] | None = None  # decision threshold (default: the model's, else 0.5)
    margin: Annotated[float, at.Ge(0), at.Le(1)] = 0.1  # a probability within this of the threshold is low confidence (listed for review)
    positive_label: str = ""  # positive class (default: dataset.json's)
    # fmt: on


def inspect(cfg: InspectConfig) -> int:
    from glomlib.slides.read import open_slide, slide_info

    slide = open_slide(cfg.slide, cfg.reader, mpp=cfg.mpp)
    info = slide_info(slide)
    slide.close()
    if cfg.json:
        print(json.dumps(info, indent=2))
        return 0
    mpp = f"{info['mpp']:.4g} um/px" if info["mpp"] else "unknown"
    print(
        f"{info['slide']}: {info['width']} x {info['height']} px, {len(info['levels'])} level(s), reader "
        f"{info['reader']}{', vendor ' + info['vendor'] if info['vendor'] else ''}\n"
        f"MPP {mpp} ({info['mpp_source']}); bounds offset {tuple(info['bounds_offset'])}"
    )
    for lv in info["levels"]:
        size = f"{lv['width']} x {lv['height']}  downsample {lv['downsample']:g}"
        print(f"  level {lv['level']}: {size}" + (f"  {lv['mpp']:.4g} um/px" if lv["mpp"] else ""))
    return 0


def extract(cfg: ExtractConfig) -> int:
    from glomlib.slides.dataset import extract_dataset
    from glomlib.slides.extract import ExtractOptions

    opts = ExtractOptions(
        target_mpp=cfg.target_mpp, context=cfg.context, size=cfg.size, reader=cfg.reader, classes=cfg.classes
    )
    m = extract_dataset(
        cfg.slides_csv,
        cfg.out,
        opts,
        workers=cfg.workers,
        positive_label=cfg.positive_label,
        progress=not cfg.no_progress,
        log=lambda s: print(s, file=sys.stderr),
    )
    print(f"wrote {m} (check it with: glomlib data check {m})")
    return 0


def export(cfg: ExportConfig) -> int:
    from glomlib.slides.export import export_predictions, model_settings

    settings = model_settings(cfg.model) if cfg.model else {}  # a bad model file: exit 5 (glomlib.cli)
    if cfg.threshold is not None:
        settings["threshold"] = cfg.threshold
    if cfg.positive_label:
        settings["positive_label"] = cfg.positive_label
    paths = export_predictions(
        cfg.predictions, cfg.manifest, cfg.out, object_type=cfg.object_type, margin=cfg.margin, **settings
    )
    n = sum(p.suffix == ".geojson" for p in paths)
    print(f"wrote {n} QuPath GeoJSON file(s), biopsies.csv and review.csv to {cfg.out}")
    return 0
