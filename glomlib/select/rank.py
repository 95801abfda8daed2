"""The ranked list of glomeruli to label next (``next_to_label.csv``) and its gallery (``gallery.html``).

The CSV has the review sheet's identity columns (``image_id``, ``path``, ``slide``, ``center``, ``label``) and
its empty ``reviewed_label`` / ``comment`` columns, so a pathologist fills it like notebook 07's sheet and
``glomlib data apply-review`` writes the labels into a new manifest. ``cluster`` is a k-means group of the pool's
embedding (the gallery's sections), ``score`` the strategy's own number for the pick, ``reason`` it in words.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.core.errors import ConfigError
from glomlib.select.embed import reduce
from glomlib.select.strategies import pick

COLUMNS = [
    "rank",
    "image_id",
    "path",
    "slide",
    "center",
    "label",
    "cluster",
    "score",
    "reason",
    "strategy",
    "reviewed_label",
    "comment",
]
ID_DIGITS = 16  # as the review sheet: the first hex digits of the image's sha256


def pool_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows a strategy may see: every row outside ``split == test`` (test slides are never selected from)."""
    split = df["split"].astype(str).str.strip().str.lower() if "split" in df.columns else pd.Series("", index=df.index)
    return (split != "test").to_numpy()


def display_clusters(Xp: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means groups of the pool (the gallery's sections), numbered by size (0 = largest)."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(Xp)))
    lab = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(Xp)
    order = np.argsort(-np.bincount(lab, minlength=k), kind="stable")
    return np.argsort(order)[lab]


def select_next(
    df: pd.DataFrame,
    X: np.ndarray,
    strategy: str,
    budget: int,
    *,
    cap: int = 0,
    seed: int = 0,
    dims: int = 64,
    clusters: int = 8,
    memory_limit_gb: float = 0.0,
) -> pd.DataFrame:
    """``budget`` rows of ``df`` (a manifest read by ``read_manifest``) to label next, ranked; labelled rows count as
    known (covered, and the training set of ``margin``); rows of ``split == test`` are never seen."""
    pool = np.flatnonzero(pool_mask(df))
    if len(pool) == 0:
        raise ConfigError("every row of the manifest is split=test: nothing to select from.")
    Xp = reduce(X, dims, pool)[pool]
    yp = df["y"].to_numpy().astype(int)[pool]
    slides = df["slide"].astype(str).to_numpy()[pool]
    free = int((yp < 0).sum())
    if budget > free:
        raise ConfigError(f"budget={budget}: the pool has only {free} unlabelled glomeruli outside split=test.")
    p = pick(strategy, Xp, yp, slides, budget, cap=cap, seed=seed, memory_limit_gb=memory_limit_gb)
    groups = display_clusters(Xp, clusters, seed)
    rows = df.iloc[pool[p.index]]
    out = pd.DataFrame(
        {
            "rank": np.arange(1, budget + 1),
            "image_id": rows["sha256"].str[:ID_DIGITS].to_numpy(),
            "path": rows["path"].to_numpy(),
            "slide": rows["slide"].astype(str).to_numpy(),
            "center": rows["center"].astype(str).to_numpy(),
            "label": rows["label"].astype(str).to_numpy(),
            "cluster": groups[p.index],
            "score": np.round(p.score, 4),
            "reason": p.reason,
            "strategy": strategy,
            "reviewed_label": "",
            "comment": "",
        }
    )[COLUMNS]
    out.attrs["pool"] = pd.DataFrame({"slide": slides, "cluster": groups, "labelled": yp >= 0})
    out.attrs["masks"] = rows["mask"].astype(str).tolist()
    return out


_CSS = """body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px} p.note{color:#555;font-size:14px;max-width:900px}
.grid{display:flex;flex-wrap:wrap;gap:10px} .card{width:__W__px;font-size:12px;color:#444}
.card img{display:block;border:1px solid #ccc} table{border-collapse:collapse} td,th{border-bottom:1px solid #ddd;
padding:3px 8px;font-size:13px;text-align:left}"""


def _card(r, thumb: str, size: int) -> str:
    esc = html.escape
    name = f"<br>{esc(Path(str(r.path)).name)}" if r.path else ""
    return (
        f'<div class="card" title="{esc(str(r.reason))}"><img src="{thumb}" width="{size}" height="{size}" '
        f'alt="pick {r.rank}"><b>#{r.rank}</b> slide {esc(str(r.slide))}<br>{esc(str(r.image_id))}{name}'
        f"<br>{esc(str(r.reason))}</div>"
    )


def _coverage(table: pd.DataFrame, pool: pd.DataFrame) -> str:
    per = pool.groupby("slide").agg(pool_n=("cluster", "size"), labelled=("labelled", "sum"))
    per["picks"] = table.groupby("slide").size().reindex(per.index).fillna(0).astype(int)
    rows = "".join(
        f"<tr><td>{html.escape(str(s))}</td><td>{r.pool_n}</td><td>{r.labelled}</td><td>{r.picks}</td></tr>"
        for s, r in per.iterrows()
    )
    return (
        "<h2>Slide coverage</h2><table><tr><th>slide</th><th>glomeruli in the pool</th><th>labelled</th>"
        f"<th>picks</th></tr>{rows}</table>"
    )


def gallery_html(
    table: pd.DataFrame,
    thumbs: list[str],
    *,
    size: int = 128,
    title: str = "Glomeruli to label next",
    subtitle: str = "",
) -> str:
    """A self-contained page (inline CSS, base64 thumbnails): picks grouped by cluster, each group with its size
    and slide coverage, then picks per slide."""
    pool = table.attrs["pool"]
    thumb = dict(zip(table["rank"], thumbs))
    parts = []
    for c in sorted(table["cluster"].unique(), key=lambda c: table.loc[table["cluster"] == c, "rank"].min()):
        t, inpool = table[table["cluster"] == c], pool[pool["cluster"] == c]
        head = (
            f"<h2>Cluster {c}: {len(t)} pick(s) from {t['slide'].nunique()} of the {inpool['slide'].nunique()} "
            f'slides in it</h2><p class="note">{len(inpool)} glomeruli of the pool, '
            f"{int(inpool['labelled'].sum())} already labelled.</p>"
        )
        parts.append(
            head + '<div class="grid">' + "".join(_card(r, thumb[r.rank], size) for r in t.itertuples()) + "</div>"
        )
    n_sl, strategy = table["slide"].nunique(), html.escape(str(table["strategy"].iloc[0]))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS.replace('__W__', str(size + 4))}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="note">{html.escape(subtitle)}</p><p class="note">{len(table)} glomeruli picked by '
        f"<b>{strategy}</b> from {len(pool)} in the pool, on {n_sl} of {pool['slide'].nunique()} slides; grouped "
        "by k-means cluster of the embedding. Label them in next_to_label.csv (column reviewed_label), rank 1 "
        "first, then apply it with <code>glomlib data apply-review</code>.</p>"
        + "".join(parts)
        + _coverage(table, pool)
        + "</body></html>\n"
    )


def thumbnails(table: pd.DataFrame, size: int = 128) -> list[str]:
    """The picks as data-URI thumbnails with the mask outline (as on the review sheet)."""
    from glomlib.data.images import read_mask, read_rgb
    from glomlib.review.labels.page import thumbnail_png

    masks = table.attrs.get("masks") or [""] * len(table)
    return [thumbnail_png(read_rgb(p, size), read_mask(m, size) if m else None) for p, m in zip(table["path"], masks)]
