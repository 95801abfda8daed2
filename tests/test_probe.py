"""glomlib.evaluate.probe: features, slide-grouped linear probe and kNN."""

import numpy as np
import pytest

from glomlib.evaluate import probe
from glomlib.models import backbones as models


def _separable(n=120, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    X = rng.normal(size=(n, d)) + y[:, None] * 1.5
    groups = np.repeat(np.arange(12), n // 12)
    return X, y, groups


def _folds(groups, y, n_folds=4):
    """The one grouped-fold implementation (glomlib.data.splits), on plain arrays."""
    import pandas as pd

    from glomlib.data.splits import assign_folds

    return assign_folds(pd.DataFrame({"slide": groups.astype(str), "y": y}), n_folds=n_folds, seed=0)


def test_linear_probe_and_knn_separate_and_random():
    X, y, g = _separable()
    folds = _folds(g, y)
    r = probe.linear_probe_cv(X, y, folds)
    assert r["auc_mean"] > 0.9 and len(r["per_fold"]) == 4
    k = probe.knn_cv(X, y, folds, k=5)
    assert k["knn_auc"] > 0.85
    rng = np.random.default_rng(1)
    r0 = probe.linear_probe_cv(rng.normal(size=X.shape), y, folds)
    assert 0.25 < r0["auc_mean"] < 0.75


def test_linear_probe_ignores_unlabeled_and_checks_lengths():
    X, y, g = _separable()
    folds = _folds(g, y)
    y2 = y.copy()
    y2[:10] = -1
    assert np.isfinite(probe.linear_probe_cv(X, y2, folds)["auc_mean"])
    with pytest.raises(ValueError, match="length"):
        probe.linear_probe_cv(X[:5], y, folds)


def test_extract_features_shape_and_mode():
    bb, d = models.build_backbone("resnet18")
    bb.train()
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    f = probe.extract_features(bb, imgs, batch_size=2, image_size=24)
    assert f.shape == (5, d) and f.dtype == np.float32
    assert bb.training  # mode restored
    f2 = probe.extract_features(bb, imgs, batch_size=5, image_size=24)
    assert np.allclose(f, f2, atol=1e-4)  # eval mode: batch composition does not matter


def test_probe_encoder_on_tiny_manifest(make_manifest, tmp_path):
    from glomlib.models import files as checkpoint

    m = make_manifest(n_slides=6, per_slide=4, size=32)
    bb, _ = models.build_backbone("resnet18")
    enc = checkpoint.save_encoder(tmp_path / "e.safetensors", bb, {"backbone": "resnet18", "image_size": 32})
    cfg = probe.ProbeConfig.from_params(backbone="resnet18", encoder=str(enc), data=str(m), image_size=32, folds=3)
    r = probe.probe_encoder(cfg)
    assert r["init"] == "glom" and r["n"] == 24 and np.isfinite(r["auc_mean"])
    assert r["positive_label"] == "M1"  # read from the manifest's dataset.json
