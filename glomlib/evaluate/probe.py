"""Frozen-feature evaluation of an encoder: feature extraction, linear probe and kNN with grouped folds.

A linear probe (logistic regression on frozen features) and a kNN classifier are the standard ways to ask
"did self-supervised pretraining learn something useful?" without fine-tuning. Folds must be grouped by
slide (or patient): patches of one slide look alike, and letting them straddle train and test inflates
every number. Pass folds from :func:`glomlib.data.splits.assign_folds`, or use :func:`grouped_folds`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from glomlib.models.inference import extract_features


def grouped_folds(groups: Any, y: Any, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per sample: stratified by ``y``, no group (slide/patient) in two folds.

    A fallback for when no manifest is at hand; with a manifest use ``glomlib.data.splits.assign_folds``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(groups)
    y = np.asarray(y)
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(f"grouped_folds: only {n_groups} groups for {n_folds} folds; lower n_folds.")
    folds = np.full(len(y), -1, dtype=int)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        folds[test] = k
    return folds


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def linear_probe_cv(features: np.ndarray, y: Any, folds: Any, C: float = 1.0, max_iter: int = 3000,
                    ) -> dict[str, Any]:
    """Logistic regression (standardised features, L2, balanced class weights) per held-out fold.

    Returns ``dict(auc_mean, auc_std, acc_mean, per_fold=[{fold, n_test, auc, acc}], pooled_auc)``.
    Folds whose test part has a single class get ``auc=nan`` and are left out of the mean.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(y).astype(int)
    folds = np.asarray(folds)
    if len(X) != len(y) or len(y) != len(folds):
        raise ValueError(f"linear_probe_cv: features ({len(X)}), y ({len(y)}) and folds ({len(folds)}) differ in length.")
    keep = y >= 0  # unlabeled rows (-1) are ignored
    X, y, folds = X[keep], y[keep], folds[keep]
    per_fold = []
    pooled = np.full(len(y), np.nan)
    for k in sorted(np.unique(folds)):
        if k < 0:
            continue
        te = folds == k
        tr = ~te & (folds >= 0)
        if len(np.unique(y[tr])) < 2:
            per_fold.append({"fold": int(k), "n_test": int(te.sum()), "auc": float("nan"), "acc": float("nan")})
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced"))
        clf.fit(X[tr], y[tr])
        p = clf.predict_proba(X[te])[:, 1]
        pooled[te] = p
        per_fold.append({"fold": int(k), "n_test": int(te.sum()), "auc": _auc(y[te], p),
                         "acc": float(((p >= 0.5).astype(int) == y[te]).mean())})
    aucs = np.array([f["auc"] for f in per_fold], dtype=float)
    accs = np.array([f["acc"] for f in per_fold], dtype=float)
    ok = ~np.isnan(pooled)
    return {
        "auc_mean": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "auc_std": float(np.nanstd(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "acc_mean": float(np.nanmean(accs)) if np.isfinite(accs).any() else float("nan"),
        "pooled_auc": _auc(y[ok], pooled[ok]) if ok.any() else float("nan"),
        "per_fold": per_fold,
    }


def knn_cv(features: np.ndarray, y: Any, folds: Any, k: int = 20, temperature: float = 0.07) -> dict[str, Any]:
    """Cosine kNN (similarity-weighted votes, as in the SSL literature) per held-out fold.

    Returns ``dict(knn_acc, knn_auc)`` pooled over folds: a cheap collapse/learning monitor.
    """
    X = np.asarray(features, dtype=np.float32)
    y = np.asarray(y).astype(int)
    folds = np.asarray(folds)
    keep = (y >= 0) & (folds >= 0)
    X, y, folds = X[keep], y[keep], folds[keep]
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    score = np.full(len(y), np.nan)
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        if tr.sum() == 0:
            continue
        sim = X[te] @ X[tr].T
        kk = min(k, int(tr.sum()))
        idx = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        s = np.take_along_axis(sim, idx, axis=1)
        w = np.exp(s / temperature)
        votes = (w * y[tr][idx]).sum(1) / np.maximum(w.sum(1), 1e-12)
        score[te] = votes
    ok = ~np.isnan(score)
    return {"knn_acc": float(((score[ok] >= 0.5).astype(int) == y[ok]).mean()) if ok.any() else float("nan"),
            "knn_auc": _auc(y[ok], score[ok]) if ok.any() else float("nan")}


def probe_encoder(backbone: str, init: str = "scratch", encoder: str | None = None,
                  data: str = "data/glomeruli-pas/manifest.csv", image_size: int = 96,
                  positive_label: str = "M1", n_folds: int = 5, seed: int = 0, batch_size: int = 128,
                  C: float = 1.0, model_seed: int | None = None) -> dict[str, Any]:
    """Slide-grouped CV linear probe + kNN of one encoder's frozen features on a manifest's labeled patches.

    ``encoder``: an ``encoder.safetensors`` (SSL) loaded into ``backbone``; else ``init`` (scratch/imagenet).
    Folds use ``seed``; random (``scratch``) weights use ``model_seed`` (default: ``seed``).
    """
    from glomlib.data.cache import load_images
    from glomlib.models.files import load_encoder_into
    from glomlib.data.manifest import read_manifest
    from glomlib.models.backbones import build_backbone
    from glomlib.data.splits import assign_folds

    df = read_manifest(data, positive_label=positive_label, require_labels=True)
    hashes = df["sha256"].tolist() if "sha256" in df.columns else None
    images = load_images(df["path"].tolist(), image_size, hashes=hashes)
    folds = assign_folds(df, n_folds=n_folds, seed=seed)
    torch.manual_seed(seed if model_seed is None else model_seed)
    model, _ = build_backbone(backbone, init="scratch" if encoder else init)
    meta = load_encoder_into(model, encoder, expect_backbone=backbone) if encoder else {}
    feats = extract_features(model, images, batch_size=batch_size, image_size=image_size)
    y = df["y"].to_numpy()
    res = linear_probe_cv(feats, y, folds, C=C)
    res.update(knn_cv(feats, y, folds))
    res.update({"backbone": backbone, "init": "glom" if encoder else init, "encoder": encoder or "",
                "image_size": image_size, "n": int(len(df)), "seed": seed, "model_seed": model_seed, "encoder_image_size": meta.get("image_size")})
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m glomlib.evaluate.probe --backbone resnet18 [--encoder run/encoder.safetensors | --init imagenet]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m glomlib.evaluate.probe", description=main.__doc__)
    p.add_argument("--backbone", required=True)
    p.add_argument("--init", default="scratch", choices=["scratch", "imagenet"])
    p.add_argument("--encoder", default=None)
    p.add_argument("--data", default="data/glomeruli-pas/manifest.csv")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--positive-label", default="M1")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-seed", type=int, default=None, help="seed of random weights (default: --seed)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    r = probe_encoder(a.backbone, a.init, a.encoder, a.data, a.image_size, a.positive_label, a.folds, a.seed,
                      model_seed=a.model_seed)
    print(f"{r['backbone']} {r['init']} {r['image_size']}px: linear-probe AUC {r['auc_mean']:.4f} ± {r['auc_std']:.4f}"
          f" (pooled {r['pooled_auc']:.4f}); kNN AUC {r['knn_auc']:.4f} acc {r['knn_acc']:.4f}")
    if a.out:
        from glomlib.core.io import write_json_atomic

        write_json_atomic(a.out, r)
    else:
        print(json.dumps({k: v for k, v in r.items() if k != "per_fold"}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
