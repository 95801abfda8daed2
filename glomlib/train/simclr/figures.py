"""Notebook 02's figures: augmented view pairs and the per-epoch history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from glomlib.core.runtime import denormalize
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from glomlib.train.augment import AugmentParams, two_views


def _save(fig, save: str | Path | None):
    fig.tight_layout()
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110, bbox_inches="tight")
    return fig


def plot_view_pairs(images: Any, params: AugmentParams, n: int = 6, seed: int = 0, save: str | Path | None = None):
    """A figure: n original patches (top) and two augmented views of each (rows 2-3)."""
    import matplotlib.pyplot as plt

    idx = np.sort(np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False))
    src = np.asarray(images[idx])
    views = two_views(src, params, torch.Generator().manual_seed(seed), rng=np.random.default_rng(seed))
    v0, v1 = (denormalize(v.float(), IMAGENET_MEAN, IMAGENET_STD).clamp(0, 1) for v in views)
    fig, axes = plt.subplots(3, len(idx), figsize=(2 * len(idx), 6.3), squeeze=False)
    for j in range(len(idx)):
        for i, im in enumerate((src[j], v0[j].permute(1, 2, 0).numpy(), v1[j].permute(1, 2, 0).numpy())):
            axes[i, j].imshow(im)
            axes[i, j].axis("off")
    for i, t in enumerate(("patch", "view 1", "view 2")):
        axes[i, 0].set_title(t, loc="left", fontsize=10)
    return _save(fig, save)


def plot_history(history: Any, save: str | Path | None = None):
    """Loss, learning rate, throughput and the collapse monitor per epoch (from history.csv)."""
    import matplotlib.pyplot as plt

    h = history if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
    for a, col, title, marker in zip(
        ax, ("loss", "lr", "images_per_s"), ("NT-Xent loss", "learning rate", "images / s"), "o.."
    ):
        a.plot(h["epoch"], h[col], marker=marker)
        a.set(title=title, xlabel="epoch")
    ax[3].plot(h["epoch"], h["embedding_std"], marker="o", label="std of normalised embeddings")
    ax[3].axhline(float(h["embedding_std_ref"].iloc[0]), ls="--", c="gray", label="1/sqrt(d) (healthy)")
    ax[3].set(title="collapse monitor", xlabel="epoch", ylim=(0, None))
    if "knn_auc" in h and h["knn_auc"].notna().any():
        k = h.dropna(subset=["knn_auc"])
        a2 = ax[3].twinx()
        a2.plot(k["epoch"], k["knn_auc"], marker="s", c="C3", label="kNN AUC")
        a2.set_ylim(0.5, 1.0)
        a2.set_ylabel("kNN AUC (labeled patches, slide-grouped)", color="C3")
    ax[3].legend(loc="lower left", fontsize=8)
    return _save(fig, save)
