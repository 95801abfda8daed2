"""Slide overviews for notebooks and reports.

Each slide's thumbnail with its outlines drawn, coloured by label
or by prediction."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

import pandas as pd

from glomlib.core.config import NonNegativeFloat, PositiveInt, StepConfig
from glomlib.slides.extract import safe_name
from glomlib.slides.read import open_slide


@dataclasses.dataclass(frozen=True)
class SlidesConfig(StepConfig):
    """Parameters of notebook 00 (slides overview)."""

    data: str = ""  # manifest.csv (or folder) made by glomlib slides extract, empty means extract one here
    slides_csv: str = ""  # slides CSV (slide, wsi, annotations) to extract, empty means build the demo slides
    out: str = "auto"  # output folder, auto means a new folder runs/<UTC stamp>-slides
    predictions: str = ""  # optional predictions CSV (glomlib predict on the manifest): outlines coloured by prediction
    target_mpp: NonNegativeFloat = 0.0  # micrometres per pixel of the crops, 0 means each slide's own
    context: NonNegativeFloat = 0.25  # share of the outline's box added on each side of a crop
    # fmt: off
    reader: Literal["tiffslide", "openslide"] = "tiffslide"  # slide reader (openslide: pip install 'glomlib[openslide]')
    # fmt: on
    max_slides: PositiveInt = 12  # slides shown
    thumbnail_size: PositiveInt = 1024  # longer side of each slide thumbnail (px)


LABEL_COLORS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple")


def _outlines(folder: Path, slide: str) -> dict[str, dict]:
    doc = json.loads((folder / "outlines" / f"{safe_name(slide)}.geojson").read_text())
    return {str(f["id"]): f["geometry"] for f in doc["features"]}


def _rings(geometry: dict) -> list[list[list[float]]]:
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [ring for poly in polys for ring in poly]


def draw_slide(
    ax,
    wsi: str | os.PathLike,
    rows: pd.DataFrame,
    geometries: dict[str, dict],
    color_of: dict,
    column: str,
    reader: str = "tiffslide",
    max_side: int = 1024,
) -> None:
    """The thumbnail of ``wsi`` on ``ax`` with each row's outline in ``color_of[row[column]]``."""
    slide = open_slide(wsi, reader)
    try:
        img, scale = slide.thumbnail(max_side)
        bx, by = slide.bounds
    finally:
        slide.close()
    ax.imshow(img)
    for r in rows.itertuples():
        for ring in _rings(geometries[str(r.annotation_id)]):
            xs = [(p[0] + bx) / scale for p in ring]
            ys = [(p[1] + by) / scale for p in ring]
            ax.plot(xs, ys, color=color_of.get(getattr(r, column), "grey"), linewidth=1.2)
    ax.set_axis_off()


def overview_figure(
    manifest: str | os.PathLike,
    predictions: str | os.PathLike | None = None,
    max_slides: int = 12,
    max_side: int = 1024,
    columns: int = 3,
):
    """One panel per slide of a slides dataset (``glomlib slides extract``): thumbnail + outlines coloured by label,
    or by predicted label when ``predictions`` (``glomlib predict`` on that manifest) is given."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    mpath = Path(manifest).expanduser().resolve()
    df = pd.read_csv(mpath, dtype=str, keep_default_na=False)
    info = json.loads((mpath.parent / "dataset.json").read_text())["slides"]
    column = "label"
    if predictions:
        pred = pd.read_csv(predictions, dtype=str, keep_default_na=False)
        keys = {str(Path(p).resolve()): lab for p, lab in zip(pred["path"], pred["pred_label"])}
        df["pred_label"] = [keys.get(str((mpath.parent / p).resolve()), "") for p in df["path"]]
        column = "pred_label"
    values = sorted(set(df[column]) - {""})
    color_of = {v: LABEL_COLORS[i % len(LABEL_COLORS)] for i, v in enumerate(values)}
    slides = list(dict.fromkeys(df["slide"]))[:max_slides]
    rows = max(1, -(-len(slides) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    for ax, slide in zip(axes.flat, slides):
        sub = df[df["slide"] == slide]
        draw_slide(
            ax,
            info["slides"][slide]["wsi"],
            sub,
            _outlines(mpath.parent, slide),
            color_of,
            column,
            info["reader"],
            max_side,
        )
        ax.set_title(f"{slide}: {len(sub)} outline(s)")
    for ax in list(axes.flat)[len(slides) :]:
        ax.set_axis_off()
    handles = [Line2D([], [], color=c, label=v) for v, c in color_of.items()]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=max(1, len(handles)),
        frameon=False,
        title="predicted label" if predictions else "label",
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
