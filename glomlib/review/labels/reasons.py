"""Why a label looks suspicious: confident errors, confident learning, near-duplicates with the other label."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.core import runtime
from glomlib.data.cache import load_images
from glomlib.models.backbones import build_backbone
from glomlib.models.files import load_encoder_into
from glomlib.models.inference import extract_features
from glomlib.review.labels.config import ReviewConfig

REASONS = ("confident_error", "confident_learning", "duplicate_conflict")


REASON_TEXT = {
    "confident_error": "the out-of-fold model calls the other class with high confidence",
    "confident_learning": "confident learning (cleanlab) marks the label as a likely error",
    "duplicate_conflict": "looks like the same glomerulus as an image with the other label",
}


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
    if encoder in ("imagenet", "scratch"):
        return build_backbone(backbone, encoder)[0]
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
    return pd.DataFrame(
        {
            "i": iu[0][idx],
            "j": iu[1][idx],
            "similarity": s[idx].round(4),
            "pair_rank": np.arange(1, len(idx) + 1),
            "percentile": pct.round(3),
        }
    )


def rank_items(
    items: pd.DataFrame, pairs: pd.DataFrame, confident: float = 0.8, cl_issues: np.ndarray | None = None
) -> pd.DataFrame:
    """Every image with at least one reason, most suspicious first: columns of ``items`` plus p_given_label,
    reasons (";"-joined), n_reasons, score, detail, partner_* and similarity (for duplicate conflicts)."""
    it = items.reset_index(drop=True).copy()
    y, prob = it["y"].to_numpy(int), it["prob"].to_numpy(float)
    pg = given_label_probability(y, prob)
    it["p_given_label"] = pg.round(4)
    flags = {
        "confident_error": confident_errors(y, prob, confident),
        "confident_learning": confident_learning_issues(y, prob) if cl_issues is None else np.asarray(cl_issues),
    }
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
            d.append(
                f"similar to {it.at[b, 'image_id']} labelled {it.at[b, 'label']} "
                f"(similarity {s:.3f}, conflicting pair #{rank})"
            )
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
        imgs = np.asarray(load_images(list(items["path"]), cfg.feature_size, hashes=list(items["sha256"])))
        embeddings = tta_embeddings(
            build_encoder(cfg.encoder, cfg.backbone), imgs, batch_size=cfg.batch_size, device=cfg.device
        )
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
