"""Figures shared by the notebooks: report-column sized (12 inches, fonts >= 9 pt), saved legibly for HTML.

Both rooms draw with it: the measurements (:mod:`glomlib.evaluate`) and the review (:mod:`glomlib.review`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

REPORT_WIDTH = 12.0  # inches; a report column
DPI = 110

# One colour per outcome, colour-blind safe (Okabe & Ito; == publish.present.ERROR_COLORS): TP the positive class's
# vermillion, TN the negative class's blue, false positives sky blue, false negatives orange.
OUTCOME_COLOURS = {"TP": "#D55E00", "TN": "#0072B2", "FP": "#56B4E9", "FN": "#E69F00"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path, name: str, dpi: int = DPI) -> Path:
    """Save ``fig`` to ``<out>/figures/<name>.png`` and return the path."""
    path = Path(out) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def bar_counts(table, title: str, xlabel="", ylabel="images", stacked=True, rotate: int = 0, height: float = 4.0):
    """Stacked bar chart of a (group x class) count table (pandas DataFrame, index = groups)."""
    plt = _plt()
    width = min(REPORT_WIDTH, max(5.0, 0.45 * len(table) + 3))
    fig, ax = plt.subplots(figsize=(width, height))
    table.plot(kind="bar", stacked=stacked, ax=ax, width=0.8, edgecolor="white")
    ax.set_title(title, fontsize=12)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.tick_params(axis="x", labelrotation=rotate, labelsize=9)
    if rotate:
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    ax.legend(title=table.columns.name, fontsize=9, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def montage(
    images, captions=None, ncols=8, title=None, tile_inches=None, caption_size=8, masks=None, caption_colours=None
):
    """A grid of RGB images with a caption under each; optional mask outlines (one per image or None) in yellow."""
    plt = _plt()
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(REPORT_WIDTH, 1.0))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title or ''}: nothing to show", ha="center", va="center", fontsize=11)
        return fig
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    tile = tile_inches or REPORT_WIDTH / ncols
    n_caption_lines = max((c.count("\n") + 1 for c in captions), default=0) if captions else 0
    cap_h = 0.16 * n_caption_lines * caption_size / 8
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(tile * ncols, (tile + cap_h) * nrows + (0.4 if title else 0)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i])
        if masks is not None and masks[i] is not None and np.any(masks[i]):
            draw_mask_outline(ax, masks[i])
        if captions:
            colour = caption_colours[i] if caption_colours else "black"
            ax.set_title(captions[i], fontsize=caption_size, color=colour, pad=2)
    fig.tight_layout()
    if title:
        h = fig.get_size_inches()[1]
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / h))
        fig.suptitle(title, fontsize=12, y=1 - 0.1 / h, va="top")
    return fig


def draw_mask_outline(ax, mask: np.ndarray, colour: str = "yellow", linewidth: float = 1.2) -> None:
    """Draw the outline of a binary mask on an image axis (mask shape == image shape)."""
    m = np.asarray(mask).astype(float)
    if m.ndim == 3:
        m = m[..., 0]
    ax.contour(m > 0.5, levels=[0.5], colors=[colour], linewidths=linewidth)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0,1] heat map (H,W) over an RGB uint8 image; returns uint8 RGB."""
    cmap = _plt().colormaps["jet"]
    heat = (cmap(np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out, 0, 255).astype(np.uint8)


def show(fig, out: str | Path | None, name: str, caption: str = "") -> None:
    """Save ``fig`` to ``<out>/figures/<name>.png``, show it inline with its caption, and close it."""
    if out is not None:
        save_figure(fig, out, name)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(fig)
            if caption:
                display(Markdown(f"*Figure `{name}`: {caption}*"))
    except ImportError:  # pragma: no cover
        pass
    _plt().close(fig)
