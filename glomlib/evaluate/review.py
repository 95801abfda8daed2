"""Label review for a pathologist: rank glomeruli whose label looks suspicious, with the reason, as HTML + CSV.

Input: a fine-tune run folder (``predictions.csv``: out-of-fold probabilities; ``config.json``: the manifest it
used) and that manifest (masks, content hashes). Three independent reasons make an image suspicious:

- ``confident_error``: the out-of-fold model calls the other class with confidence >= ``confident``
  (each image is scored by a fold model that never saw it);
- ``confident_learning``: cleanlab's ``find_label_issues`` on the out-of-fold probabilities (confident learning:
  per-class thresholds estimate the joint distribution of given and true labels and prune the likely errors);
- ``duplicate_conflict``: a pair of images with different labels whose encoder embeddings are among the most
  similar pairs of the collection. Embeddings come from :func:`glomlib.models.inference.extract_features`,
  averaged over the 8 flips/90-degree rotations (so a rotated or flipped copy gets the same descriptor) and
  pooled over the whole image (so a shifted crop stays close), then PCA-whitened (``whiten`` components) so
  the features every glomerulus shares do not dominate the similarity. Perceptual hashes (notebook 01) only
  catch copies of the same pixels; this also catches a shifted or re-cut crop of the same glomerulus.

Ranking: images flagged for more reasons first, then by ``1 - p(given label)`` (the out-of-fold probability of
the label the image carries; low = the model disagrees). The page and the CSV list ``n_items`` images.

Outputs (:func:`write_review`): ``review.html`` (self-contained: thumbnails with the mask outline as base64
PNG, no scripts, no external files), ``review.csv`` (one row per image with empty ``reviewed_label`` and
``comment`` columns for the pathologist; fill them and run ``glomlib data apply-review``), ``pairs.csv``
(conflicting near-duplicate pairs). Pseudonymisable: ``slide_names`` maps slide IDs to pseudonyms and
``show_paths=False`` keeps file names (which often contain the slide ID) off the page and out of the CSV;
rows are then matched back by ``image_id`` (the first 16 hex digits of the image's sha256).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from glomlib.core.config import ConfigError, StepConfig, add_config_arguments, config_from_args

REASONS = ("confident_error", "confident_learning", "duplicate_conflict")
REASON_TEXT = {
    "confident_error": "the out-of-fold model calls the other class with high confidence",
    "confident_learning": "confident learning (cleanlab) marks the label as a likely error",
    "duplicate_conflict": "looks like the same glomerulus as an image with the other label",
}
REVIEW_COLUMNS = ["rank", "image_id", "path", "slide", "center", "label", "prob", "p_given_label", "score",
                  "reasons", "detail", "partner_image_id", "partner_path", "partner_label", "similarity",
                  "reviewed_label", "comment"]
ID_DIGITS = 16  # hex digits of the sha256 used as image_id


@dataclasses.dataclass
class ReviewConfig(StepConfig):
    """Parameters of the label review (``glomlib review``)."""

    run: str = "latest"  # fine-tune run folder (predictions.csv); latest means the newest under runs/
    data: str = ""  # manifest (masks, hashes); empty means the one named in the run's config.json
    out: str = "auto"  # output folder (never overwritten); auto means runs/<stamp>-review
    label_fraction: float = 1.0  # which label fraction's predictions to use (nearest available)
    confident: float = 0.8  # out-of-fold confidence at or above which an error counts as confident
    n_items: int = 60  # images listed on the page and in the CSV (most suspicious first)
    n_pairs: int = 20  # most similar conflicting-label pairs checked as possible duplicates
    min_pair_percentile: float = 99.0  # a pair counts only if its similarity is above this percentile of all pairs
    encoder: str = "imagenet"  # embedding encoder: imagenet (offline weights), scratch, or an encoder.safetensors
    backbone: str = "efficientnet_lite0"  # backbone of the embedding encoder
    feature_size: int = 96  # pixels (square) fed to the encoder for the embeddings
    whiten: int = 64  # PCA-whitening components for the embeddings (0 turns whitening off)
    thumb_size: int = 160  # thumbnail size on the page (pixels)
    show_paths: bool = True  # false: no file names on the page or in the CSV (they may carry slide IDs)
    batch_size: int = 64  # images per forward pass
    device: str = "auto"  # auto | cpu | cuda | mps

    def validate(self) -> None:
        if not 0.5 <= self.confident < 1:
            raise ConfigError(f"confident={self.confident}: must be in [0.5, 1).")
        if self.n_items < 1 or self.n_pairs < 0:
            raise ConfigError("n_items must be >= 1 and n_pairs >= 0.")
        if not 0 <= self.min_pair_percentile < 100:
            raise ConfigError(f"min_pair_percentile={self.min_pair_percentile}: must be in [0, 100).")
        if self.whiten < 0 or self.feature_size < 16 or self.thumb_size < 16:
            raise ConfigError("whiten must be >= 0; feature_size and thumb_size at least 16 pixels.")


# ----------------------------------------------------------------------------------------------- inputs

def run_manifest(run_dir: Path, data: str = "") -> Path:
    """The manifest of a fine-tune run: ``data`` when given, else ``config.json``'s ``data`` (relative paths
    resolve against the current folder, then the project root)."""
    if data:
        p = Path(data)
    else:
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} does not exist, so the run's manifest is unknown; pass data=<manifest>.")
        p = Path(json.loads(cfg_path.read_text()).get("data", ""))
        if not p.is_absolute() and not p.exists():
            from glomlib.core.paths import project_root

            p = project_root() / p
    if not p.is_file():
        raise FileNotFoundError(f"manifest {p} does not exist; pass data=<the manifest the run was trained on>.")
    return p


def load_review_inputs(run_dir: str | Path, data: str = "", label_fraction: float = 1.0) -> pd.DataFrame:
    """Out-of-fold predictions of a run joined with its manifest: one row per labelled image with
    path, slide, center, label, y, prob, mask, sha256, image_id, manifest_row."""
    from glomlib.data.manifest import read_manifest
    from glomlib.evaluate.explain import load_predictions

    run_dir = Path(run_dir)
    pred = load_predictions(run_dir, label_fraction)
    pos = pred.loc[pred["y"] == 1, "label"]
    neg = pred.loc[pred["y"] == 0, "label"]
    if not len(pos) or not len(neg):
        raise ValueError(f"{run_dir / 'predictions.csv'} needs images of both classes for a label review.")
    mpath = run_manifest(run_dir, data)
    man = read_manifest(mpath, positive_label=str(pos.iloc[0]), negative_label=str(neg.iloc[0]),
                        require_labels=False)
    by_path = man.set_index("path")
    missing = [p for p in pred["path"] if p not in by_path.index]
    if missing:
        raise ValueError(f"{len(missing)} image(s) of {run_dir / 'predictions.csv'} are not in manifest {mpath}, "
                         f"e.g. {missing[:3]}; pass data=<the manifest the run was trained on>.")
    m = by_path.loc[pred["path"]]
    out = pred[["path", "label", "y", "prob"]].copy()
    for c in ("slide", "center", "mask", "sha256"):
        out[c] = m[c].to_numpy()
    out["manifest_row"] = m["row"].to_numpy()
    out["image_id"] = [h[:ID_DIGITS] for h in out["sha256"]]
    out.attrs.update(manifest=str(mpath), positive_label=str(pos.iloc[0]), negative_label=str(neg.iloc[0]))
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- reasons

def given_label_probability(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Out-of-fold probability of the label each image carries (prob for positives, 1 - prob for negatives)."""
    y, prob = np.asarray(y, int), np.asarray(prob, float)
    return np.where(y == 1, prob, 1 - prob)


def confident_errors(y: np.ndarray, prob: np.ndarray, confident: float = 0.8) -> np.ndarray:
    """True where the out-of-fold call is wrong with confidence >= ``confident`` (the same rule for both classes:
    the probability of the *other* class, compared with a tolerance for rounded probabilities)."""
    return 1 - given_label_probability(y, prob) >= confident - 1e-9


def confident_learning_issues(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """True where cleanlab's confident learning (``find_label_issues``, prune by noise rate) flags the label."""
    from cleanlab.filter import find_label_issues

    y = np.asarray(y, int)
    p = np.clip(np.asarray(prob, float), 1e-6, 1 - 1e-6)
    pred_probs = np.stack([1 - p, p], axis=1)
    return np.asarray(find_label_issues(labels=y, pred_probs=pred_probs, filter_by="prune_by_noise_rate"), bool)


def dihedral_variants(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/90-degree rotations of uint8 NHWC images (identity first)."""
    out = []
    for k in range(8):
        v = np.rot90(images, k % 4, axes=(1, 2))
        if k >= 4:
            v = v[:, :, ::-1]
        out.append(np.ascontiguousarray(v))
    return out


def build_encoder(encoder: str = "imagenet", backbone: str = "efficientnet_lite0"):
    """The embedding encoder: ImageNet or random weights, or an SSL ``encoder.safetensors`` (or its run folder)."""
    from glomlib.models.backbones import build_backbone

    if encoder in ("imagenet", "scratch"):
        return build_backbone(backbone, encoder)[0]
    from glomlib.models.files import load_encoder_into

    path = Path(encoder)
    if path.is_dir():
        path = path / "encoder.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"encoder={encoder!r}: choose imagenet, scratch, or an encoder.safetensors file.")
    net = build_backbone(backbone, "scratch")[0]
    load_encoder_into(net, path, expect_backbone=backbone)
    return net


def tta_embeddings(backbone, images: np.ndarray, *, batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """L2-normalised mean of the L2-normalised features of the 8 flips/rotations: (N, D), the same for an image
    and any rotated or flipped copy of it."""
    from glomlib.core import runtime
    from glomlib.models.inference import extract_features

    plan = runtime.plan(device, "fp32")
    backbone.to(plan.device)
    acc = None
    for v in dihedral_variants(np.asarray(images)):
        f = extract_features(backbone, v, batch_size, plan=plan)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        acc = f if acc is None else acc + f
    acc = acc / 8.0
    return (acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def similarity_matrix(emb: np.ndarray, whiten: int = 64) -> np.ndarray:
    """Cosine similarity (N, N) of the embeddings, after centring and PCA-whitening to ``whiten`` components,
    at most N/4 of them: whitening nearly as many components as there are images gives every direction equal
    weight, noise included, and makes all images look equally unlike (measured: a shifted, rotated copy among
    61 real patches is the most similar pair with 16 or 32 components and rank 389 with 60); diagonal = -inf."""
    x = np.asarray(emb, np.float64)
    x = x - x.mean(axis=0)
    k = min(int(whiten), x.shape[0] // 4, x.shape[1])
    if whiten and k >= 2:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        x = u[:, :k]  # whitened principal components (unit variance up to a constant)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return sim


def conflicting_pairs(sim: np.ndarray, y: np.ndarray, n_pairs: int = 20, min_percentile: float = 99.0) -> pd.DataFrame:
    """The ``n_pairs`` most similar pairs (i < j) whose labels differ, among pairs more similar than the
    ``min_percentile`` percentile of all pairs. Columns: i, j, similarity, pair_rank (1 = most similar conflicting
    pair), percentile (share of all pairs that are less similar, in %)."""
    y = np.asarray(y)
    iu = np.triu_indices(len(y), 1)
    s = sim[iu]
    if not len(s) or n_pairs == 0:
        return pd.DataFrame(columns=["i", "j", "similarity", "pair_rank", "percentile"])
    cut = np.percentile(s, min_percentile)
    conflict = (y[iu[0]] != y[iu[1]]) & (s > cut)
    idx = np.flatnonzero(conflict)
    idx = idx[np.argsort(-s[idx], kind="stable")][:n_pairs]
    ranked = np.sort(s)
    pct = 100.0 * np.searchsorted(ranked, s[idx], side="left") / len(s)
    return pd.DataFrame({"i": iu[0][idx], "j": iu[1][idx], "similarity": s[idx].round(4),
                         "pair_rank": np.arange(1, len(idx) + 1), "percentile": pct.round(3)})


# ----------------------------------------------------------------------------------------------- ranking

def rank_items(items: pd.DataFrame, pairs: pd.DataFrame, confident: float = 0.8,
               cl_issues: np.ndarray | None = None) -> pd.DataFrame:
    """Every image with at least one reason, most suspicious first: columns of ``items`` plus p_given_label,
    reasons (";"-joined), n_reasons, score, detail, partner_* and similarity (for duplicate conflicts)."""
    it = items.reset_index(drop=True).copy()
    y, prob = it["y"].to_numpy(int), it["prob"].to_numpy(float)
    pg = given_label_probability(y, prob)
    it["p_given_label"] = pg.round(4)
    flags = {"confident_error": confident_errors(y, prob, confident),
             "confident_learning": confident_learning_issues(y, prob) if cl_issues is None else np.asarray(cl_issues)}
    partner: dict[int, tuple[int, float, int]] = {}
    for _, r in pairs.iterrows():
        for a, b in ((int(r["i"]), int(r["j"])), (int(r["j"]), int(r["i"]))):
            if a not in partner or partner[a][1] < r["similarity"]:
                partner[a] = (b, float(r["similarity"]), int(r["pair_rank"]))
    dup = np.zeros(len(it), bool)
    dup[list(partner)] = True
    flags["duplicate_conflict"] = dup
    reasons, details = [], []
    for k in range(len(it)):
        rs = [name for name in REASONS if flags[name][k]]
        d = []
        if flags["confident_error"][k] or flags["confident_learning"][k]:
            d.append(f"out-of-fold p({it.at[k, 'label']}) = {pg[k]:.2f}")
        if k in partner:
            b, s, rank = partner[k]
            d.append(f"similar to {it.at[b, 'image_id']} labelled {it.at[b, 'label']} "
                     f"(similarity {s:.3f}, conflicting pair #{rank})")
        reasons.append(";".join(rs))
        details.append("; ".join(d))
    it["reasons"] = reasons
    it["n_reasons"] = [len(r.split(";")) if r else 0 for r in reasons]
    it["detail"] = details
    it["score"] = (it["n_reasons"] + (1 - pg)).round(4)  # more reasons first, then model disagreement
    for col in ("partner_image_id", "partner_path", "partner_label", "partner_mask"):
        it[col] = ""
    it["similarity"] = np.nan
    for a, (b, s, _) in partner.items():
        it.at[a, "partner_image_id"] = it.at[b, "image_id"]
        it.at[a, "partner_path"] = it.at[b, "path"]
        it.at[a, "partner_label"] = it.at[b, "label"]
        it.at[a, "partner_mask"] = it.at[b, "mask"]
        it.at[a, "similarity"] = s
    out = it[it["n_reasons"] > 0].sort_values(["score", "image_id"], ascending=[False, True], kind="stable")
    out = out.reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


@dataclasses.dataclass
class Review:
    """What :func:`build_review` finds: ``ranked`` (suspicious images, most suspicious first), ``pairs``
    (conflicting near-duplicate pairs with paths), ``items`` (every image with its out-of-fold probability)."""

    ranked: pd.DataFrame
    pairs: pd.DataFrame
    items: pd.DataFrame


def build_review(items: pd.DataFrame, cfg: ReviewConfig | None = None, embeddings: np.ndarray | None = None) -> Review:
    """Find the suspicious labels of ``items`` (from :func:`load_review_inputs`). ``embeddings`` (N, D) may be
    passed in; otherwise they are computed with ``cfg.encoder`` on the images at ``cfg.feature_size``."""
    cfg = cfg or ReviewConfig()
    items = items.reset_index(drop=True)
    if embeddings is None and cfg.n_pairs > 0:
        from glomlib.data.cache import load_images

        imgs = np.asarray(load_images(list(items["path"]), cfg.feature_size, hashes=list(items["sha256"])))
        embeddings = tta_embeddings(build_encoder(cfg.encoder, cfg.backbone), imgs, batch_size=cfg.batch_size,
                                    device=cfg.device)
    if cfg.n_pairs > 0:
        sim = similarity_matrix(embeddings, cfg.whiten)
        pairs = conflicting_pairs(sim, items["y"].to_numpy(), cfg.n_pairs, cfg.min_pair_percentile)
    else:
        pairs = conflicting_pairs(np.zeros((0, 0)), np.zeros(0), 0)
    ranked = rank_items(items, pairs, cfg.confident)
    named = pairs.copy()
    for s, col in (("a", "i"), ("b", "j")):
        for c in ("image_id", "path", "slide", "label", "prob"):
            named[f"{c}_{s}"] = items[c].to_numpy()[named[col].astype(int)] if len(named) else []
    return Review(ranked=ranked, pairs=named, items=items)


# ----------------------------------------------------------------------------------------------- outputs

def thumbnail_png(image: np.ndarray, mask: np.ndarray | None = None, colour=(255, 221, 0)) -> str:
    """A uint8 RGB thumbnail as a base64 PNG data URI, with the mask outline drawn when a mask is given."""
    import cv2

    img = np.ascontiguousarray(np.asarray(image, np.uint8)).copy()
    if mask is not None and np.any(mask):
        m = (np.asarray(mask) > 0).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, colour, max(1, img.shape[0] // 100))
    ok, buf = cv2.imencode(".png", img[:, :, ::-1])
    if not ok:
        raise ValueError("could not encode a thumbnail as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _thumbs(paths: Sequence[str], masks: Sequence[str], size: int) -> list[str]:
    """Thumbnails as data URIs (decoded directly: a page of thumbnails is not worth a cache entry)."""
    from glomlib.data.cache import decode_image, decode_mask

    return [thumbnail_png(decode_image(str(p), size), decode_mask(str(m), size) if m else None)
            for p, m in zip(paths, masks)]


def review_table(review: Review, n_items: int = 60, slide_names: Mapping[str, str] | None = None,
                 show_paths: bool = True) -> pd.DataFrame:
    """The CSV for the pathologist: the ``n_items`` most suspicious images (``REVIEW_COLUMNS``), with empty
    ``reviewed_label`` and ``comment``. ``slide_names`` replaces slide IDs; ``show_paths=False`` empties paths."""
    r = review.ranked.head(n_items).copy()
    if slide_names is not None:
        r["slide"] = [slide_names.get(s, s) for s in r["slide"]]
    if not show_paths:
        r["path"] = ""
        r["partner_path"] = ""
    r["reviewed_label"] = ""
    r["comment"] = ""
    r["prob"] = r["prob"].astype(float).round(4)
    return r[REVIEW_COLUMNS]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} p.note{color:#555;font-size:14px;max-width:900px}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:6px 8px;vertical-align:top;
font-size:13px;text-align:left} th{background:#f4f4f4;position:sticky;top:0}
td.img img{display:block;border:1px solid #ccc} .reason{display:inline-block;background:#fde2d4;border-radius:3px;
padding:1px 5px;margin:1px 2px 1px 0;font-size:12px} .lab{font-weight:600} .small{color:#666;font-size:12px}
td.fill{min-width:120px;color:#aaa}
"""


def review_html(review: Review, table: pd.DataFrame, *, thumb_size: int = 160, title: str = "Label review",
                subtitle: str = "", slide_names: Mapping[str, str] | None = None) -> str:
    """A self-contained HTML page (inline CSS, base64 thumbnails, no scripts) listing ``table``'s rows."""
    ranked = review.ranked.set_index("image_id")
    ids = list(table["image_id"])
    rows = ranked.loc[ids]
    thumbs = _thumbs(rows["path"].tolist(), rows["mask"].tolist(), thumb_size)
    has_partner = rows["partner_path"].astype(str) != ""
    pthumbs = iter(_thumbs(rows.loc[has_partner, "partner_path"].tolist(),
                           rows.loc[has_partner, "partner_mask"].tolist(), thumb_size))
    items = review.items.set_index("image_id")
    esc = html.escape
    body = []
    for k, (iid, t) in enumerate(zip(ids, table.itertuples(index=False))):
        r = rows.iloc[k]
        reasons = "".join(f'<span class="reason" title="{esc(REASON_TEXT[x])}">{esc(x.replace("_", " "))}</span>'
                          for x in str(t.reasons).split(";") if x)
        partner = ""
        if has_partner.iloc[k]:
            pid = r["partner_image_id"]
            pslide = str(items.at[pid, "slide"]) if pid in items.index else ""
            if slide_names is not None:
                pslide = slide_names.get(pslide, pslide)
            partner = (f'<img src="{next(pthumbs)}" width="{thumb_size}" height="{thumb_size}" alt="partner {esc(pid)}">'
                       f'<div class="small">{esc(pid)}<br>labelled <span class="lab">{esc(str(r["partner_label"]))}'
                       f'</span><br>slide {esc(pslide)}<br>similarity {float(r["similarity"]):.3f}</div>')
        name = f"<br>{esc(Path(str(t.path)).name)}" if t.path else ""
        body.append(
            f"<tr><td>{t.rank}</td>"
            f'<td class="img"><img src="{thumbs[k]}" width="{thumb_size}" height="{thumb_size}" alt="image {esc(iid)}">'
            f'<div class="small">{esc(iid)}{name}</div></td>'
            f'<td><span class="lab">{esc(str(t.label))}</span></td>'
            f"<td>{float(t.prob):.2f}<div class=\"small\">p(given label) {float(t.p_given_label):.2f}</div></td>"
            f"<td>{reasons}<div class=\"small\">{esc(str(t.detail))}</div></td>"
            f"<td>{esc(str(t.slide))}<div class=\"small\">{esc(str(t.center))}</div></td>"
            f'<td class="img">{partner}</td><td class="fill"></td></tr>')
    pos = review.items.attrs.get("positive_label", "positive")
    n_reason = {x: int(review.ranked["reasons"].str.contains(x).sum()) for x in REASONS}
    summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in n_reason.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{_CSS}</style></head>
<body><h1>{esc(title)}</h1>
<p class="note">{esc(subtitle)}</p>
<p class="note">{len(review.ranked)} of {len(review.items)} images have at least one reason ({summary});
the {len(table)} most suspicious are listed, most suspicious first (more reasons first, then the lower the
out-of-fold probability of the label the image carries). <b>prob</b> is the out-of-fold probability of
<b>{esc(str(pos))}</b>, from a fold model that never saw the image. The yellow line is the glomerulus mask.
Write your decision in the <code>reviewed_label</code> column of review.csv (the row with the same image ID),
a comment if you like, then apply it with <code>glomlib data apply-review</code>.</p>
<p class="note">Reasons: {'; '.join(f'<b>{k.replace("_", " ")}</b>: {esc(v)}' for k, v in REASON_TEXT.items())}.</p>
<table><thead><tr><th>#</th><th>image</th><th>label</th><th>prob</th><th>reasons</th><th>slide</th>
<th>similar image with the other label</th><th>your label</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def write_review(review: Review, out: str | Path, cfg: ReviewConfig | None = None,
                 slide_names: Mapping[str, str] | None = None, subtitle: str = "") -> dict[str, Path]:
    """Write ``review.html``, ``review.csv`` and ``pairs.csv`` into ``out`` (new files only)."""
    from glomlib.core.io import publish_new, write_csv_new

    cfg = cfg or ReviewConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = review_table(review, cfg.n_items, slide_names, cfg.show_paths)
    page = review_html(review, table, thumb_size=cfg.thumb_size, subtitle=subtitle, slide_names=slide_names)
    pairs = review.pairs.copy()
    if slide_names is not None and len(pairs):
        for s in ("a", "b"):
            pairs[f"slide_{s}"] = [slide_names.get(v, v) for v in pairs[f"slide_{s}"]]
    if not cfg.show_paths:
        pairs = pairs.drop(columns=[c for c in ("path_a", "path_b") if c in pairs])
    paths = {"html": out / "review.html", "csv": out / "review.csv", "pairs": out / "pairs.csv"}
    write_csv_new(table, paths["csv"])
    write_csv_new(pairs.drop(columns=["i", "j"]), paths["pairs"])
    publish_new(paths["html"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths


def run_review(cfg: ReviewConfig | None = None, slide_names: Mapping[str, str] | None = None,
               **params: Any) -> tuple[Review, dict[str, Path]]:
    """The whole review from a fine-tune run: inputs, reasons, ranking, and the files in a new ``out`` folder."""
    from glomlib.core import io as runs
    from glomlib.evaluate.explain import resolve_run

    cfg = cfg if cfg is not None else ReviewConfig.from_params(**params)
    cfg.validate()
    run_dir = resolve_run(cfg.run)
    items = load_review_inputs(run_dir, cfg.data, cfg.label_fraction)
    out = Path(runs.new_run_dir("runs", "review") if cfg.out == "auto" else runs.ensure_new_dir(cfg.out))
    try:
        review = build_review(items, cfg)
    except BaseException:
        runs.release_claim(out)  # nothing written yet: the same --out can be used again
        raise
    cfg.save(out / "config.json")
    runs.write_provenance(out, cfg, extra={"finetune_run": str(Path(run_dir).resolve()),
                                           "manifest": items.attrs.get("manifest", "")})
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    run_name = Path(run_dir).name if cfg.show_paths else "a fine-tune run"
    sub = f"Out-of-fold predictions of {run_name}; built {when}."
    paths = write_review(review, out, cfg, slide_names, sub)
    return review, paths


# ----------------------------------------------------------------------------------------------- browser

def record_decision(csv_path: str | Path, image_id: str, reviewed_label: str | None = None,
                    comment: str | None = None) -> pd.DataFrame:
    """Write one decision into the review CSV at once (atomic rewrite): the row with ``image_id`` gets
    ``reviewed_label`` and/or ``comment`` (None = leave as is). KeyError when the id is not in the sheet."""
    from glomlib.core.io import write_csv_atomic

    t = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    hit = t["image_id"] == image_id
    if not hit.any():
        raise KeyError(f"image_id {image_id} is not in {csv_path}")
    if reviewed_label is not None:
        t.loc[hit, "reviewed_label"] = reviewed_label
    if comment is not None:
        t.loc[hit, "comment"] = comment
    write_csv_atomic(t, csv_path)
    return t


def review_browser(review: Review, csv_path: str | Path, page_size: int = 8, thumb_size: int = 160):
    """An ipywidgets browser over the review sheet: per image the thumbnail (with the similar image of the other
    label, if any), its label, probability and reasons, one button per label (plus ``unsure`` and ``-`` to
    clear) and a comment box. Every click or comment is written into ``csv_path`` immediately, so nothing is
    lost when the notebook is closed. Each item's box carries the CSS class ``glomlib-review-<image_id>``."""
    import ipywidgets as w

    csv_path = Path(csv_path)
    sheet = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    ranked = review.ranked.set_index("image_id")
    labels = [str(review.items.attrs.get("positive_label", "")), str(review.items.attrs.get("negative_label", ""))]
    labels = [x for x in labels if x] or sorted(set(review.items["label"].astype(str)))
    options = [("-", ""), *[(x, x) for x in labels], ("unsure", "unsure")]
    status = w.HTML()
    out = w.VBox()
    state = {"page": 0}
    pages = max(1, -(-len(sheet) // page_size))

    def item(r: pd.Series) -> w.Widget:
        iid = r["image_id"]
        rr = ranked.loc[iid]
        thumb = _thumbs([rr["path"]], [rr["mask"]], thumb_size)[0]
        imgs = f'<img src="{thumb}" width="{thumb_size}" height="{thumb_size}">'
        if str(rr["partner_path"]):
            pt = _thumbs([rr["partner_path"]], [rr["partner_mask"]], thumb_size)[0]
            imgs += (f'<img src="{pt}" width="{thumb_size}" height="{thumb_size}" style="margin-left:6px" '
                     f'title="similar image labelled {html.escape(str(rr["partner_label"]))}">')
        text = (f"<b>#{html.escape(str(r['rank']))}</b> label <b>{html.escape(r['label'])}</b>, "
                f"prob {float(r['prob']):.2f}, slide {html.escape(r['slide'])}<br>"
                f"{html.escape(r['reasons'].replace(';', ', ').replace('_', ' '))}<br>"
                f"<small>{html.escape(r['detail'])}</small>")
        buttons = w.ToggleButtons(options=options, value=r["reviewed_label"] if r["reviewed_label"] in
                                  dict(options).values() else "", description="your label",
                                  style={"button_width": "80px"})
        note = w.Text(value=r["comment"], placeholder="comment", continuous_update=False,
                      layout=w.Layout(width="420px"))

        def on_label(change, iid=iid):
            record_decision(csv_path, iid, reviewed_label=change["new"])
            status.value = f"saved: {html.escape(iid)} &rarr; {html.escape(change['new'] or '(cleared)')}"

        def on_note(change, iid=iid):
            record_decision(csv_path, iid, comment=change["new"])
            status.value = f"saved comment for {html.escape(iid)}"

        buttons.observe(on_label, names="value")
        note.observe(on_note, names="value")
        box = w.HBox([w.HTML(imgs), w.VBox([w.HTML(text), buttons, note])],
                     layout=w.Layout(border="1px solid #ddd", padding="6px", margin="4px 0"))
        box.add_class("glomlib-review-item")
        box.add_class(f"glomlib-review-{iid}")
        return box

    prev_b, next_b, info = w.Button(description="< previous"), w.Button(description="next >"), w.Label()

    def render() -> None:
        cur = pd.read_csv(csv_path, dtype=str, keep_default_na=False)  # decisions already made show as set
        chunk = cur.iloc[state["page"] * page_size:(state["page"] + 1) * page_size]
        out.children = [item(r) for _, r in chunk.iterrows()]
        done = int((cur["reviewed_label"] != "").sum())
        info.value = f"page {state['page'] + 1}/{pages} - {done} of {len(cur)} reviewed - saving to {csv_path.name}"

    def step(delta: int):
        def f(_):
            state["page"] = min(pages - 1, max(0, state["page"] + delta))
            render()
        return f

    prev_b.on_click(step(-1))
    next_b.on_click(step(+1))
    render()
    return w.VBox([w.HBox([prev_b, next_b, info]), out, status])


def show_review(review: Review, paths: Mapping[str, Path], interactive: bool = True) -> str:
    """The widget browser in a live JupyterLab kernel; otherwise (papermill, HTML report) a pointer to the
    self-contained page and the CSV. Returns "widget" or "static"."""
    from IPython.display import Markdown, display

    from glomlib.evaluate.explain import live_frontend

    if live_frontend(interactive):
        display(review_browser(review, paths["csv"]))
        return "widget"
    display(Markdown(f"{len(review.ranked)} images flagged. Review page: `{paths['html']}` (open it in a browser); "
                     f"write decisions into `{paths['csv']}` (column `reviewed_label`), or open this notebook in "
                     "JupyterLab and click them."))
    return "static"


# ----------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser("review", help="label review sheet (HTML + CSV) from a fine-tune run",
                              description=__doc__.splitlines()[0])
    add_config_arguments(p, ReviewConfig)

    def _run(args: argparse.Namespace) -> int:
        cfg = config_from_args(ReviewConfig, args)
        review, paths = run_review(cfg)
        counts = {x: int(review.ranked["reasons"].str.contains(x).sum()) for x in REASONS}
        print(f"{len(review.ranked)} of {len(review.items)} images flagged: {counts}")
        for k, v in paths.items():
            print(f"{k:>5}: {v}")
        return 0

    p.set_defaults(func=_run)
