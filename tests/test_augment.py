"""glomlib.train.augment: batched, switchable SimCLR augmentations."""

import numpy as np
import pytest
import torch

from glomlib.train import augment as A

OFF = dict(crop_p=0, hflip_p=0, vflip_p=0, rotate_p=0, jitter_p=0, grayscale_p=0, blur_p=0, clahe_p=0)


def _imgs(n=4, s=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_all_off_is_identity():
    x = _imgs()
    out = A.augment_batch(x, A.AugmentParams(image_size=16, **OFF), _g(), normalize=False)
    assert torch.allclose(out, A.to_float_nchw(x), atol=1e-5)


@pytest.mark.parametrize("name,fn", [("hflip_p", lambda t: t.flip(-1)), ("vflip_p", lambda t: t.flip(-2))])
def test_flips(name, fn):
    x = _imgs()
    p = A.AugmentParams(image_size=16, **{**OFF, name: 1.0})
    out = A.augment_batch(x, p, _g(), normalize=False)
    assert torch.allclose(out, fn(A.to_float_nchw(x)), atol=1e-5)


def test_rotation_any_angle_reflect_fill_and_size():
    x = np.full((3, 16, 16, 3), 200, np.uint8)
    p = A.AugmentParams(image_size=24, **{**OFF, "rotate_p": 1.0, "rotate_degrees": 180})
    out = A.augment_batch(x, p, _g(), normalize=False)
    assert out.shape == (3, 3, 24, 24)
    assert torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-4)  # no black corners
    p0 = A.AugmentParams(image_size=24, **{**OFF, "rotate_p": 1.0, "rotate_fill": "zeros"})
    assert A.augment_batch(x, p0, _g(), normalize=False).min() < 0.5  # zero fill does show corners


def test_crop_changes_content_and_is_seeded():
    x = _imgs()
    p = A.AugmentParams(image_size=16, **{**OFF, "crop_p": 1.0, "crop_scale_min": 0.2, "crop_scale_max": 0.3})
    a = A.augment_batch(x, p, _g(1), normalize=False)
    b = A.augment_batch(x, p, _g(1), normalize=False)
    c = A.augment_batch(x, p, _g(2), normalize=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, A.to_float_nchw(x), atol=1e-3)


def test_colour_jitter_grayscale_blur_ranges():
    x = _imgs(8)
    p = A.AugmentParams(image_size=16, **{**OFF, "jitter_p": 1.0, "grayscale_p": 0.0, "blur_p": 1.0})
    out = A.augment_batch(x, p, _g(), normalize=False)
    assert out.min() >= 0 and out.max() <= 1 + 1e-5 and torch.isfinite(out).all()
    pg = A.AugmentParams(image_size=16, **{**OFF, "grayscale_p": 1.0})
    g = A.augment_batch(x, pg, _g(), normalize=False)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])


def test_clahe_probability_and_copy():
    x = np.random.default_rng(0).integers(80, 120, (6, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(A.apply_clahe(x, 0.0), x)
    y = A.apply_clahe(x, 1.0, clip=4.0, grid=4, rng=np.random.default_rng(0))
    assert y.dtype == np.uint8 and y.shape == x.shape
    assert y.std() > x.std()  # contrast stretched
    assert not np.shares_memory(y, x)


def test_two_views_differ_and_are_normalised():
    x = _imgs(6, 32)
    v0, v1 = A.two_views(
        x, A.AugmentParams(image_size=24, clahe_p=0.5), _g(), rng=np.random.default_rng(0), channels_last=True
    )
    assert v0.shape == v1.shape == (6, 3, 24, 24)
    assert not torch.allclose(v0, v1)
    assert v0.is_contiguous(memory_format=torch.channels_last)
    assert v0.min() < 0  # normalised


def test_params_validation_and_from_config():
    with pytest.raises(ValueError, match="hflip_p"):
        A.AugmentParams(hflip_p=1.5).validate()
    with pytest.raises(ValueError, match="rotate_fill"):
        A.AugmentParams(rotate_fill="wrap").validate()
    p = A.AugmentParams.from_config({"image_size": 40, "hue": 0.0, "unrelated": 1})
    assert p.image_size == 40 and p.hue == 0.0


@pytest.mark.realdata
def test_views_of_real_patches(shared_data):
    from PIL import Image

    paths = sorted((shared_data / "Patches/Raw/Images/GS").glob("*.png"))[:4]
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])
    v0, v1 = A.two_views(x, A.AugmentParams(image_size=64, clahe_p=1.0), _g())
    assert v0.shape == (4, 3, 64, 64) and torch.isfinite(v0).all()
