"""The audit's figures: example montages, flagged and duplicate galleries, stain and quality distributions."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glomlib.evaluate import plots
from glomlib.review.audit.config import AuditConfig
from glomlib.review.audit.scan import CHANNELS, OD_BINS
from glomlib.review.audit.tables import _centre, _label
from glomlib.review.display import mask_or_none, tile


def sample_rows(df: pd.DataFrame, by: str, n: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Up to ``n`` random rows per group, reproducible."""
    key = _centre(df) if by == "center" else _label(df) if by == "label" else df[by].astype(str)
    return {g: grp.sample(min(n, len(grp)), random_state=seed) for g, grp in df.groupby(key)}


def montage_by(df: pd.DataFrame, by: str, n: int = 8, seed: int = 0, size: int = 160):
    """One montage figure with a row of ``n`` examples per group (class or centre); captions = slide."""
    samples = sample_rows(df, by, n, seed)
    images, captions = [], []
    for g, rows in samples.items():
        for k in range(n):
            if k < len(rows):
                r = rows.iloc[k]
                images.append(tile(r["path"], size))
                other = r["label"] if by == "center" else (r["center"] or "")
                head = f"[{g}]  " if k == 0 else ""
                captions.append(f"{head}{other}\n{r['slide']}".strip())
            else:
                images.append(np.full((size, size, 3), 255, np.uint8))
                captions.append("")
    title = {"center": "Examples per centre (one row each)", "label": "Examples per class (one row each)"}.get(by, by)
    return plots.montage(images, captions, ncols=n, title=title, caption_size=9)


def flagged_gallery(
    flags: pd.DataFrame,
    df: pd.DataFrame,
    max_per_reason: int = 8,
    size: int = 160,
    reasons: list[str] | None = None,
    colors: dict[str, str] | None = None,
):
    """Montage of flagged images, one row per reason (worst first), captioned with reason, value and class (in
    ``colors[class]``); the glomerulus mask, where the manifest has one, outlined in yellow."""
    masks = dict(zip(df["path"], df["mask"])) if "mask" in df else {}
    images, captions, mks, cols = [], [], [], []
    reasons = reasons or sorted(flags["reason"].unique())
    for reason in reasons:
        f = flags[flags["reason"] == reason].drop_duplicates("path")
        if reason in ("blur", "mask_small"):
            f = f.sort_values("value")
        elif reason in ("background",):
            f = f.sort_values("value", ascending=False)
        elif reason.startswith("stain"):
            f = f.assign(a=f["value"].abs()).sort_values("a", ascending=False)
        f = f.head(max_per_reason)
        for k in range(max_per_reason):
            if k < len(f):
                r = f.iloc[k]
                images.append(tile(r["path"], size))
                mks.append(mask_or_none(masks.get(r["path"], ""), size))
                val = r["value"]
                vtxt = f"{val:g}" if isinstance(val, (int, float, np.floating, np.integer)) and np.isfinite(val) else ""
                captions.append(f"{reason} {vtxt}\n{r['label']}\n{Path(r['path']).stem}")
                cols.append((colors or {}).get(str(r["label"]), "black"))
            else:
                images.append(np.full((size, size, 3), 255, np.uint8))
                mks.append(None)
                captions.append("")
                cols.append("black")
    title = "Flagged images (one row per reason)"
    return plots.montage(images, captions, max_per_reason, title, caption_size=8, masks=mks, caption_colours=cols)


def duplicate_gallery(pairs: pd.DataFrame, max_pairs: int = 8, size: int = 140):
    """Side-by-side duplicate pairs (two tiles per pair), closest first."""
    p = pairs.sort_values(["distance"]).head(max_pairs)
    images, captions = [], []
    for _, r in p.iterrows():
        for s in ("a", "b"):
            images.append(tile(r[f"path_{s}"], size))
            extra = f" · fold {r[f'fold_{s}']}" if f"fold_{s}" in r else ""
            captions.append(
                f"{r['kind']} d={r['distance']}\n{Path(r[f'path_{s}']).stem}\n{r.get(f'label_{s}', '')}{extra}"
            )
    return plots.montage(
        images,
        captions,
        ncols=min(8, max(2, len(images))),
        title="Duplicate pairs (neighbouring tiles belong together)",
        caption_size=8,
    )


def channel_boxplots(table: pd.DataFrame):
    """Box plots per centre: RGB means (top) and tissue OD per channel (bottom)."""
    t = table[table["error"] == ""].assign(center=_centre(table))
    centres = sorted(t["center"].unique())
    fig, axes = plt.subplots(2, 3, figsize=(plots.REPORT_WIDTH, 6.5), sharey="row")
    colours = {"R": "#c0392b", "G": "#27ae60", "B": "#2e86c1"}
    for row, (prefix, ylabel) in enumerate((("mean_", "mean intensity (0-255)"), ("od_", "tissue optical density"))):
        for k, c in enumerate(CHANNELS):
            ax = axes[row, k]
            data = [t.loc[t["center"] == g, prefix + c].dropna().to_numpy() for g in centres]
            bp = ax.boxplot(data, tick_labels=centres, patch_artist=True, widths=0.6, flierprops={"markersize": 3})
            for b in bp["boxes"]:
                b.set_facecolor(colours[c])
                b.set_alpha(0.45)
            ax.set_title(f"{c} channel", fontsize=11)
            ax.tick_params(axis="x", labelsize=9, labelrotation=20)
            ax.grid(axis="y", alpha=0.3)
            if k == 0:
                ax.set_ylabel(ylabel)
    fig.suptitle("Colour and stain per centre (each box = images of one centre)", fontsize=12)
    fig.tight_layout()
    return fig


def od_histogram_figure(hists: dict[str, np.ndarray]):
    """Per-channel OD distributions of tissue pixels, one line per centre."""
    centres_ = (OD_BINS[:-1] + OD_BINS[1:]) / 2
    fig, axes = plt.subplots(1, 3, figsize=(plots.REPORT_WIDTH, 3.6), sharey=True)
    for k, c in enumerate(CHANNELS):
        ax = axes[k]
        for g, h in hists.items():
            ax.plot(centres_, h[k], linewidth=1.8, label=g)
        ax.set_title(f"OD, {c} channel", fontsize=11)
        ax.set_xlabel("optical density (tissue pixels)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of pixels")
    axes[-1].legend(fontsize=9, frameon=False)
    fig.suptitle("Optical-density distributions per centre (higher OD = darker stain)", fontsize=12)
    fig.tight_layout()
    return fig


def quality_histograms(table: pd.DataFrame, cfg: AuditConfig):
    """Distributions of the quality measures with the flag thresholds marked."""
    t = table[table["error"] == ""].assign(center=_centre(table))
    fig, axes = plt.subplots(1, 3, figsize=(plots.REPORT_WIDTH, 3.6))
    specs = [
        ("blur_lapvar", "sharpness: variance of Laplacian (log scale)", cfg.blur_min, True),
        ("background_frac", "share of near-white (background) pixels", cfg.background_max, False),
        ("od_total", "tissue OD (R+G+B)", None, False),
    ]
    for ax, (col, xlabel, thr, log) in zip(axes, specs):
        for g, grp in t.groupby("center"):
            v = grp[col].dropna().to_numpy()
            if log:
                v = np.log10(np.maximum(v, 1e-3))
            ax.hist(v, bins=30, histtype="step", linewidth=1.6, label=g)
        if thr is not None:
            ax.axvline(np.log10(thr) if log else thr, color="black", linestyle="--", label="flag threshold")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("images")
    axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=9, frameon=False, loc="upper right")
    fig.suptitle("Quality measures per centre; dashed = flag threshold", fontsize=12)
    fig.tight_layout()
    return fig


def mask_area_figure(df: pd.DataFrame, area: pd.Series, colors: dict[str, str] | None = None):
    """Distribution of the glomerulus share of the patch, per class and per centre (``colors``: group -> colour,
    e.g. the class colours)."""
    d = df.assign(area=area.to_numpy(), center=_centre(df), label=_label(df))
    d = d[d["area"] >= 0]
    fig, axes = plt.subplots(1, 2, figsize=(plots.REPORT_WIDTH, 3.6), sharey=True)
    for ax, key in zip(axes, ("label", "center")):
        for g, grp in d.groupby(key):
            ax.hist(
                grp["area"],
                bins=np.linspace(0, 1, 26),
                histtype="step",
                linewidth=1.8,
                density=True,
                color=(colors or {}).get(str(g)),
                label=f"{g} (median {grp['area'].median():.2f})",
            )
        ax.set_xlabel("glomerulus area / patch area (from mask)")
        ax.set_title(f"per {'class' if key == 'label' else 'centre'}", fontsize=11)
        ax.legend(fontsize=9, frameon=False)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    fig.suptitle("Glomerulus size relative to the patch", fontsize=12)
    fig.tight_layout()
    return fig
