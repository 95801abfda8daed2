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
from glomlib.review.explain.galleries import load_display_images
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
    """2x2 maps coloured by true label, prediction (the classes in their outcome colours: positive vermillion,
    negative blue), outcome and centre; errors drawn on top with a black edge."""
    fig, axes = plt.subplots(2, 2, figsize=(plots.REPORT_WIDTH, 10))
    names = {y: str(pred.loc[pred["y"] == y, "label"].iloc[0]) if (pred["y"] == y).any() else str(y) for y in (0, 1)}
    colours = {names[1]: plots.OUTCOME_COLOURS["TP"], names[0]: plots.OUTCOME_COLOURS["TN"], **plots.OUTCOME_COLOURS}
    colours.update({f"called {names[1]}": colours[names[1]], f"called {names[0]}": colours[names[0]]})
    panels = [
        ("true label", pred["y"].map(names).to_numpy()),
        ("prediction", np.array([f"called {names[int(v)]}" for v in pred["pred"]])),
        ("outcome", pred["outcome"].to_numpy()),
        ("centre", pred["center"].astype(str).to_numpy()),
    ]
    others = ["#009E73", "#CC79A7", "#F0E442", "#7F7F7F", "#000000"]  # Okabe-Ito, not the class/outcome colours
    err = pred["error"].to_numpy()
    for ax, (title, values) in zip(axes.flat, panels):
        for k, c in enumerate(sorted(set(values))):
            sel = values == c
            colour = colours.get(c, others[k % len(others)]) if title != "centre" else others[k % len(others)]
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
    label and probability in the caption, coloured by the neighbour's class: vermillion positive, blue negative)."""
    nn_idx = np.asarray(nn_idx, int).reshape(len(errors), -1)
    k = nn_idx.shape[1]
    order = [i for row, e in zip(nn_idx, errors) for i in (e, *row)]
    imgs = load_display_images(pred["path"].iloc[order].tolist(), size) if order else []
    caps, cols = [], []
    for row, e in zip(nn_idx, errors):
        er = pred.iloc[e]
        caps.append(f"ERROR ({er['outcome']}): truly {er['label'] or er['y']}, p={er['prob']:.2f}\n{er['slide']}")
        cols.append("black")
        for j in row:
            r = pred.iloc[j]
            caps.append(f"{r['label'] or r['y']} p={r['prob']:.2f}\n{r['slide']}")
            cols.append(plots.OUTCOME_COLOURS["TP" if r["y"] == 1 else "TN"])
    return plots.montage(
        list(imgs),
        caps,
        ncols=k + 1,
        caption_size=8,
        caption_colours=cols,
        title=f"Each error (first column) and its {k} nearest neighbours in embedding space",
    )
