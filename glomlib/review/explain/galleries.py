"""Error galleries and the confidence / error-rate figures."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glomlib.data.cache import load_images
from glomlib.evaluate import plots
from glomlib.review.display import mask_or_none
from glomlib.review.explain.inputs import error_rates


def load_display_images(paths: Sequence[str], size: int) -> np.ndarray:
    """uint8 (N,size,size,3) via the shared cache (decoded once)."""
    return np.asarray(load_images([str(p) for p in paths], size))


def load_display_masks(mask_paths: Sequence[str], size: int) -> list[np.ndarray | None]:
    return [mask_or_none(m, size) for m in mask_paths]


def caption(r: pd.Series, extra: str = "") -> str:
    """Two short lines: outcome and probability; slide (and centre unless the slide name starts with it)."""
    centre, slide = str(r.get("center", "") or ""), str(r.get("slide", ""))
    where = slide if not centre or slide.startswith(centre) else f"{slide} ({centre})"
    return f"{r['outcome']} p={r['prob']:.2f}{extra}\n{where}"


def confidence_figure(pred: pd.DataFrame, threshold: float = 0.5, labels: tuple[str, str] = ("positive", "negative")):
    """Left: predicted probability per true class; right: confidence of correct calls vs errors."""
    fig, axes = plt.subplots(1, 2, figsize=(plots.REPORT_WIDTH, 3.8))
    bins = np.linspace(0, 1, 26)
    for y, name, colour in ((1, labels[0], plots.OUTCOME_COLOURS["TP"]), (0, labels[1], plots.OUTCOME_COLOURS["TN"])):
        axes[0].hist(
            pred.loc[pred["y"] == y, "prob"], bins=bins, histtype="step", lw=2, color=colour, label=f"truly {name}"
        )
    axes[0].axvline(threshold, color="black", linestyle="--", label="threshold")
    axes[0].set_yscale("log")
    axes[0].set_xlabel(f"predicted probability of {labels[0]}")
    axes[0].set_ylabel("images (log scale)")
    axes[0].legend(fontsize=9, frameon=False)
    cb = np.linspace(0.5, 1, 21)
    kinds = (("correct", ~pred["error"], "#7F7F7F"), ("false positives", pred["outcome"] == "FP", "FP"))
    for name, sel, colour in (*kinds, ("false negatives", pred["outcome"] == "FN", "FN")):
        share = np.ones(int(sel.sum())) / max(1, int(sel.sum()))  # each group sums to 1: comparable shapes
        axes[1].hist(
            pred.loc[sel, "confidence"],
            bins=cb,
            weights=share,
            histtype="step",
            linewidth=2,
            color=plots.OUTCOME_COLOURS.get(colour, colour),
            label=f"{name} ({int(sel.sum())})",
        )
    axes[1].set_xlabel("confidence of the model in its call")
    axes[1].set_ylabel("share of the group")
    axes[1].legend(fontsize=9, frameon=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("How sure is the model? (out-of-fold predictions)", fontsize=12)
    fig.tight_layout()
    return fig


def error_rate_figure(pred: pd.DataFrame):
    """Error rate per centre (left) and per slide (right), annotated with the number of images."""
    by_c, by_s = error_rates(pred, "center"), error_rates(pred, "slide")
    fig, axes = plt.subplots(
        1, 2, figsize=(plots.REPORT_WIDTH, max(3.6, 0.22 * len(by_s) + 1)), gridspec_kw={"width_ratios": [1, 2]}
    )
    for ax, t, title in ((axes[0], by_c, "per centre"), (axes[1], by_s, "per slide")):
        t = t.iloc[::-1]
        ax.barh(t.index.astype(str), t["FP"] / t["images"], color=plots.OUTCOME_COLOURS["FP"], label="false positives")
        ax.barh(
            t.index.astype(str),
            t["FN"] / t["images"],
            left=t["FP"] / t["images"],
            color=plots.OUTCOME_COLOURS["FN"],
            label="false negatives",
        )
        for k, (_, r) in enumerate(t.iterrows()):
            ax.text(r["error_rate"] + 0.005, k, f"{int(r['errors'])}/{int(r['images'])}", va="center", fontsize=8)
        ax.set_title(f"Error rate {title}", fontsize=11)
        ax.set_xlabel("share of images misclassified")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, max(0.05, float(t["error_rate"].max()) * 1.3))
    axes[0].legend(fontsize=9, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig
