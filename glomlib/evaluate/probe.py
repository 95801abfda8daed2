"""Frozen-feature evaluation of an encoder: feature extraction, linear probe and kNN with grouped folds.

``glomlib probe`` runs them on a manifest. Folds are grouped by slide: patches of one slide look alike, and letting
them straddle train and test inflates every number.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types as at
import numpy as np
import torch

from glomlib.core import runs, runtime
from glomlib.core.config import ConfigError, Device, PositiveFloat, PositiveInt, Precision, StepConfig
from glomlib.core.io import write_json_atomic
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.data.cache import load_images
from glomlib.data.manifest import read_manifest
from glomlib.data.public import ensure_default_manifest
from glomlib.data.splits import assign_folds
from glomlib.evaluate.metrics import auc
from glomlib.models.backbones import build_backbone
from glomlib.models.files import EncoderFileError, load_encoder_into
from glomlib.models.inference import extract_features


def linear_probe_cv(
    features: np.ndarray,
    y: Any,
    folds: Any,
    C: float = 1.0,
    max_iter: int = 3000,
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
        raise ValueError(
            f"linear_probe_cv: features ({len(X)}), y ({len(y)}) and folds ({len(folds)}) differ in length."
        )
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
        per_fold.append(
            {
                "fold": int(k),
                "n_test": int(te.sum()),
                "auc": auc(y[te], p),
                "acc": float(((p >= 0.5).astype(int) == y[te]).mean()),
            }
        )
    aucs = np.array([f["auc"] for f in per_fold], dtype=float)
    accs = np.array([f["acc"] for f in per_fold], dtype=float)
    ok = ~np.isnan(pooled)
    return {
        "auc_mean": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "auc_std": float(np.nanstd(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "acc_mean": float(np.nanmean(accs)) if np.isfinite(accs).any() else float("nan"),
        "pooled_auc": auc(y[ok], pooled[ok]) if ok.any() else float("nan"),
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
    return {
        "knn_acc": float(((score[ok] >= 0.5).astype(int) == y[ok]).mean()) if ok.any() else float("nan"),
        "knn_auc": auc(y[ok], score[ok]) if ok.any() else float("nan"),
    }


@dataclasses.dataclass(frozen=True)
class ProbeConfig(StepConfig):
    """Parameters of ``glomlib probe``: one encoder's frozen features, slide-grouped linear probe and kNN."""

    data: str = str(DEFAULT_MANIFEST)  # manifest CSV (its labelled rows are probed)
    out: str = ""  # JSON file for the result ("" = print it); never overwritten
    backbone: Literal["resnet18", "resnet50", "efficientnet_lite0"] = "efficientnet_lite0"  # the encoder's network
    init: Literal["scratch", "imagenet"] = "imagenet"  # scratch | imagenet (weights probed when no encoder is given)
    encoder: str = ""  # encoder.safetensors of an SSL run ("" = use init)
    image_size: PositiveInt = 96  # pixels fed to the encoder
    positive_label: str = ""  # positive class ("" = the one the manifest's dataset.json names)
    folds: Annotated[int, at.Ge(2)] = 5  # slide-grouped cross-validation folds
    seed: int = 0  # seed of the folds
    model_seed: int = -1  # seed of random (scratch) weights (-1 = seed)
    batch_size: PositiveInt = 128  # images per forward pass
    c: PositiveFloat = 1.0  # inverse L2 strength of the logistic regression
    knn_k: PositiveInt = 20  # neighbours of the kNN classifier
    device: Device = "auto"  # auto | cpu | cuda
    precision: Precision = "auto"  # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32

    def validate(self) -> None:
        if self.out and Path(self.out).exists():
            raise ConfigError(f"out={self.out}: the file exists; choose a new one (results are never overwritten).")


def _encoder_file(spec: str) -> Path:
    """An encoder file from a path, an SSL run folder or ``latest``; a missing one is a model-file error (exit 5)."""
    try:
        return runs.encoder_path(spec)
    except FileNotFoundError as e:
        raise EncoderFileError(str(e)) from None


def probe_encoder(cfg: ProbeConfig) -> dict[str, Any]:
    """Slide-grouped CV linear probe + kNN of one encoder's frozen features on a manifest's labeled patches.

    ``cfg.encoder``: an ``encoder.safetensors`` (SSL) loaded into ``cfg.backbone``; else ``cfg.init`` weights.
    Folds use ``cfg.seed``; random (``scratch``) weights use ``cfg.model_seed`` (-1: ``cfg.seed``).
    """
    encoder = _encoder_file(cfg.encoder) if cfg.encoder else None  # a missing encoder fails before any work
    data = ensure_default_manifest(cfg.data) if cfg.data == str(DEFAULT_MANIFEST) else cfg.data
    df = read_manifest(data, positive_label=cfg.positive_label, require_labels=True)
    hashes = df["sha256"].tolist() if "sha256" in df.columns else None
    images = load_images(df["path"].tolist(), cfg.image_size, hashes=hashes)
    folds = assign_folds(df, n_folds=cfg.folds, seed=cfg.seed)
    model_seed = cfg.seed if cfg.model_seed < 0 else cfg.model_seed
    torch.manual_seed(model_seed)
    model, _ = build_backbone(cfg.backbone, init="scratch" if cfg.encoder else cfg.init)
    meta = load_encoder_into(model, encoder, expect_backbone=cfg.backbone) if encoder else {}
    p = runtime.plan(
        cfg.device,
        cfg.precision,
        workload=runtime.Workload(
            f"features-{cfg.backbone}",
            cfg.image_size,
            cfg.batch_size,
            lambda: build_backbone(cfg.backbone, init="scratch")[0],
            train=False,
        ),
    )
    feats = extract_features(model.to(p.device), images, batch_size=cfg.batch_size, image_size=cfg.image_size, plan=p)
    y = df["y"].to_numpy()
    res = linear_probe_cv(feats, y, folds, C=cfg.c)
    res.update(knn_cv(feats, y, folds, k=cfg.knn_k))
    res.update(
        {
            "backbone": cfg.backbone,
            "init": "glom" if cfg.encoder else cfg.init,
            "encoder": cfg.encoder,
            "image_size": cfg.image_size,
            "n": int(len(df)),
            "seed": cfg.seed,
            "model_seed": model_seed,
            "positive_label": df.attrs["positive_label"],
            "encoder_image_size": (meta or {}).get("image_size"),
            "runtime": p.to_dict(),
        }
    )
    return res


def cli_run(cfg: ProbeConfig) -> int:
    """``glomlib probe``: print the probe's summary line and write (or print) the result."""
    r = probe_encoder(cfg)
    print(
        f"{r['backbone']} {r['init']} {r['image_size']}px: linear-probe AUC {r['auc_mean']:.4f} ± {r['auc_std']:.4f}"
        f" (pooled {r['pooled_auc']:.4f}); kNN AUC {r['knn_auc']:.4f} acc {r['knn_acc']:.4f}"
    )
    if cfg.out:
        write_json_atomic(cfg.out, r)
        print(f"wrote {cfg.out}")
    else:
        print(json.dumps({k: v for k, v in r.items() if k != "per_fold"}))
    return 0
