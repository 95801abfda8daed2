"""Stain robustness options: Reinhard normalisation (glomlib.data.stain), HED augmentation
(glomlib.train.augment.hed_jitter), applied in fine-tuning and, from the model file, when predicting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glomlib.data.stain import REINHARD_TARGET, normalize_stain, reinhard
from glomlib.train.augment import hed_jitter


def _tissue(shade: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.stack([rng.integers(150, 230, (24, 24)), rng.integers(90, 170, (24, 24)),
                    rng.integers(140, 220, (24, 24))], axis=-1)
    return np.clip(img - shade, 0, 255).astype(np.uint8)


def test_reinhard_maps_different_stains_to_the_same_colour_statistics():
    import cv2

    pale, dark = _tissue(0), _tissue(90, seed=1)
    out = reinhard(np.stack([pale, dark]))
    assert out.shape == (2, 24, 24, 3) and out.dtype == np.uint8
    labs = [cv2.cvtColor(o, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float) for o in out]
    before = [cv2.cvtColor(o, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float) for o in (pale, dark)]
    gap_before = abs(before[0][:, 0].mean() - before[1][:, 0].mean())
    gap_after = abs(labs[0][:, 0].mean() - labs[1][:, 0].mean())
    assert gap_before > 60 and gap_after < 3
    assert abs(labs[0][:, 0].mean() - REINHARD_TARGET["mean"][0]) < 3
    assert np.array_equal(reinhard(pale), out[0])  # a single image is handled the same way
    assert normalize_stain(pale, "") is pale or np.array_equal(normalize_stain(pale, ""), pale)
    with pytest.raises(ValueError, match="stain_normalize"):
        normalize_stain(pale, "macenko-typo")
    with pytest.raises(ValueError, match="uint8 RGB"):
        reinhard(pale.astype(float))


def test_hed_jitter_changes_stain_not_geometry_and_is_identity_at_zero():
    x = torch.from_numpy(_tissue(20)).permute(2, 0, 1)[None].float().div(255).repeat(4, 1, 1, 1)
    assert hed_jitter(x, 0.0) is x
    same = hed_jitter(x, 1e-7, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-4)  # OD -> HED -> OD round trip
    g = torch.Generator().manual_seed(0)
    y = hed_jitter(x, 0.08, g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float((y - x).abs().mean()) > 0.005
    assert not torch.allclose(y[0], y[1])  # each image gets its own perturbation
    # per image, pixel order is preserved for the dominant channel (a colour change, not a spatial one)
    r = torch.corrcoef(torch.stack([x[0].mean(0).flatten(), y[0].mean(0).flatten()]))[0, 1]
    assert r > 0.9


def test_finetune_leave_one_centre_out_with_stain_options(tiny_manifest, tmp_path):
    """cv=centre: each test fold is one whole centre; stain options are recorded and the model file asks
    predict() to normalise."""
    from glomlib.evaluate.predict import load_model
    from glomlib.train.finetune import run_finetune

    res = run_finetune(data=str(tiny_manifest), out=str(tmp_path / "loco"), init="scratch", backbone="resnet18",
                       image_size=16, epochs=1, folds=2, cv="centre", positive_label="M1", progress=False,
                       stain_augment=0.05, stain_normalize="reinhard", min_steps=0, device="cpu")
    p = res.predictions
    assert (p.groupby("fold")["center"].nunique() == 1).all() and p.groupby("center")["fold"].nunique().eq(1).all()
    assert set(p["center"]) == {"A", "B"}
    _, meta = load_model(res.model_path)
    assert meta["stain_normalize"] == "reinhard"
    # the operating threshold is chosen on the out-of-fold predictions (Youden), not fixed at 0.5
    from glomlib.evaluate.metrics import threshold_from_oof

    assert meta["threshold_rule"].startswith("youden")
    assert meta["threshold"] == pytest.approx(threshold_from_oof(p, "youden"))
    with pytest.raises(Exception, match="cv="):
        run_finetune(data=str(tiny_manifest), out=str(tmp_path / "x"), cv="hospital", init="scratch")


def test_simclr_augmentation_has_a_stain_switch():
    from glomlib.train.augment import AugmentParams, augment_batch
    from glomlib.train.simclr import SSLConfig

    assert AugmentParams.from_config(SSLConfig(stain_augment=0.05)).stain_augment == 0.05
    imgs = np.stack([_tissue(10, s) for s in range(4)])
    off = AugmentParams(image_size=24, crop_p=0, hflip_p=0, vflip_p=0, rotate_p=0, jitter_p=0)
    on = AugmentParams(**{**off.__dict__, "stain_augment": 0.08})
    x0 = augment_batch(imgs, off, torch.Generator().manual_seed(0), normalize=False)
    x1 = augment_batch(imgs, on, torch.Generator().manual_seed(0), normalize=False)
    assert torch.allclose(x0, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, atol=1e-5)
    assert float((x1 - x0).abs().mean()) > 0.005
    with pytest.raises(ValueError, match="stain_augment"):
        AugmentParams(stain_augment=2.0).validate()
