"""The embedding map (UMAP, t-SNE fallback) and each error's nearest labelled neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from glomlib.evaluate import plots
from glomlib.review.explain.galleries import caption, load_display_images
from glomlib.review.explain.models import ExplainModels, embeddings


def embeddings_by_model(
    models: ExplainModels, images: np.ndarray, positions: Sequence[int] | None = None, batch_size: int = 32
) -> dict[Path, np.ndarray]:
    """``{model file: embeddings of every image (N, D)}`` for the models that explain ``positions`` (default: all
    rows): each model's own embedding space, for nearest neighbours as that model sees them."""
    positions = range(len(models.files)) if positions is None else positions
    out = {}
    for path in models.groups(positions):
        model, meta = models.load(path)
        out[path] = embeddings(model, meta, images, batch_size)
    return out


def oof_embeddings(models: ExplainModels, by_model: dict[Path, np.ndarray]) -> np.ndarray:
    """(N, D): each image's embedding from the model that did not see it, standardised per model (the fold models'
    spaces differ in scale; the map shows structure within them, not offsets between them)."""
    first = next(iter(by_model.values()))
    out = np.zeros(first.shape, np.float32)
    for path, members in models.groups(range(len(models.files))).items():
        e = by_model[path]
        z = (e - e.mean(0)) / np.maximum(e.std(0), 1e-6)
        out[members] = z[members]
    return out


def neighbours_by_model(
    models: ExplainModels, by_model: dict[Path, np.ndarray], errors: Sequence[int], k: int = 5
) -> np.ndarray:
    """(len(errors), k): each error's k nearest images in the embedding space of the model that explains it."""
    if not len(errors):
        return np.zeros((0, k), int)
    return np.stack([nearest_neighbours(by_model[models.files[e]], [e], k)[0] for e in errors])


def embed_2d(emb: np.ndarray, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D map of the embeddings: UMAP (cosine) or t-SNE (also the fallback when UMAP fails or is missing)."""
    x = StandardScaler().fit_transform(emb)
    if method == "umap" and len(x) > 15:
        try:
            import umap

            return umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1).fit_transform(
                x
            ), "UMAP"
        except Exception as e:  # fall back, but say so
            print(f"UMAP failed ({type(e).__name__}: {e}); using t-SNE.")
    perplexity = float(min(30, max(2, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x), "t-SNE"


def embedding_figure(xy: np.ndarray, pred: pd.DataFrame, method: str = "UMAP"):
    """2x2 maps coloured by true label, prediction, correctness (outcome) and centre; errors drawn on top."""
    fig, axes = plt.subplots(2, 2, figsize=(plots.REPORT_WIDTH, 10))
    lab = pred["label"].astype(str).where(pred["label"].astype(str) != "", pred["y"].astype(str))
    predicted = np.where(pred["pred"] == 1, "called positive", "called negative")
    panels = [
        ("true label", lab.to_numpy()),
        ("prediction", predicted),
        ("outcome", pred["outcome"].to_numpy()),
        ("centre", pred["center"].astype(str).to_numpy()),
    ]
    err = pred["error"].to_numpy()
    for ax, (title, values) in zip(axes.flat, panels):
        cats = sorted(set(values))
        cmap = plt.get_cmap("tab10")
        for k, c in enumerate(cats):
            sel = values == c
            colour = plots.OUTCOME_COLOURS.get(c, cmap(k % 10))
            ax.scatter(xy[sel & ~err, 0], xy[sel & ~err, 1], s=9, alpha=0.6, color=colour, label=f"{c} ({sel.sum()})")
            ax.scatter(
                xy[sel & err, 0], xy[sel & err, 1], s=40, alpha=0.95, color=colour, edgecolors="black", linewidths=0.8
            )
        ax.set_title(f"coloured by {title}", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=9, frameon=False, markerscale=1.5, loc="best")
    fig.suptitle(f"{method} map of the model's image embeddings (black-edged dots = errors)", fontsize=12)
    fig.tight_layout()
    return fig


def nearest_neighbours(emb: np.ndarray, query: Sequence[int], k: int = 5) -> np.ndarray:
    """Indices (len(query), k) of the k nearest other images by cosine similarity of the embeddings."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query, int)
    sim = x[q] @ x.T
    sim[np.arange(len(q)), q] = -np.inf
    return np.argsort(-sim, axis=1)[:, :k]


def neighbour_gallery(pred: pd.DataFrame, nn_idx: np.ndarray, errors: Sequence[int], size: int = 140):
    """One row per error: the error, then its nearest neighbours ``nn_idx`` (from :func:`neighbours_by_model`;
    label and probability in the caption; red caption = neighbour of the other class than the error's true label)."""
    nn_idx = np.asarray(nn_idx, int).reshape(len(errors), -1)
    k = nn_idx.shape[1]
    order = [i for row, e in zip(nn_idx, errors) for i in (e, *row)]
    imgs = load_display_images(pred["path"].iloc[order].tolist(), size) if order else []
    caps, cols = [], []
    for row, e in zip(nn_idx, errors):
        er = pred.iloc[e]
        caps.append("ERROR " + caption(er))
        cols.append("#d95f02")
        for j in row:
            r = pred.iloc[j]
            caps.append(f"{r['label'] or r['y']} p={r['prob']:.2f}\n{r['slide']}")
            cols.append("#c0392b" if r["y"] != er["y"] else "black")
    return plots.montage(
        list(imgs),
        caps,
        ncols=k + 1,
        caption_size=8,
        caption_colours=cols,
        title=f"Each error (first column) and its {k} nearest neighbours in embedding space",
    )
