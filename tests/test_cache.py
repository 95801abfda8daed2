"""Patch cache: decode once, uint8 memmap keyed by content, bounded build, atomic entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import glomlib.data.cache as cache
from glomlib.data.cache import cache_path, decode_image, default_cache_dir, load_images, load_masks
from glomlib.data.manifest import read_manifest


def test_load_images_shape_dtype_readonly(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    x = load_images(df["path"], 8, cache_dir=tmp_path)
    assert isinstance(x, np.memmap) and x.shape == (24, 8, 8, 3) and x.dtype == np.uint8
    assert not x.flags.writeable
    ref = decode_image(df["path"][0], 8)
    assert np.array_equal(x[0], ref)
    full = decode_image(df["path"][0])
    assert full.shape == (16, 16, 3)
    # RGB order: the generator's positives have a dark blob; the image corner is light
    assert full[0, 0].min() >= 150
    idx = json.loads(next(tmp_path.glob("images-8px-*.json")).read_text())
    assert idx["n"] == 24 and idx["image_size"] == 8 and idx["interpolation"] == "area"
    assert [f["sha256"] for f in idx["files"]] == list(df["sha256"])


def test_second_call_does_not_decode(tiny_manifest, tmp_path, monkeypatch):
    df = read_manifest(tiny_manifest)
    a = load_images(df["path"], 8, cache_dir=tmp_path)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "decode_image", boom)
    b = load_images(df["path"], 8, cache_dir=tmp_path, hashes=df["sha256"])
    assert np.array_equal(a, b)
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another entry
        load_images(df["path"], 12, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="decoded again"):  # another interpolation too
        load_images(df["path"], 8, cache_dir=tmp_path, interpolation="linear")


def test_key_follows_content_not_path(tiny_manifest, tmp_path, write_png):
    df = read_manifest(tiny_manifest)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_manifest.parent, moved)
    base = tiny_manifest.parent.resolve()
    moved_paths = [str(moved / Path(p).relative_to(base)) for p in df["path"]]
    cd = tmp_path / "c"
    assert cache_path(df["path"], 8, cache_dir=cd) == cache_path(moved_paths, 8, cache_dir=cd)
    before = cache_path(moved_paths, 8, cache_dir=cd)
    write_png(moved_paths[0], np.zeros((16, 16, 3), np.uint8))
    assert cache_path(moved_paths, 8, cache_dir=cd) != before
    x = load_images(moved_paths, 8, cache_dir=cd)
    assert x[0].max() == 0


def test_interrupted_build_leaves_no_entry(tiny_manifest, tmp_path, monkeypatch):
    df = read_manifest(tiny_manifest)
    calls = {"n": 0}
    real = cache.decode_image

    def flaky(p, *a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk on fire")
        return real(p, *a, **k)

    monkeypatch.setattr(cache, "decode_image", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_images(df["path"], 8, cache_dir=tmp_path, workers=1)
    assert not list(tmp_path.glob("*.npy"))
    assert not list(tmp_path.glob(".*tmp*"))
    monkeypatch.setattr(cache, "decode_image", real)
    assert load_images(df["path"], 8, cache_dir=tmp_path).shape == (24, 8, 8, 3)


def test_bad_image_error_names_file(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    p = df["path"][3]
    open(p, "wb").write(b"garbage")
    with pytest.raises(ValueError, match=p.replace("\\", "\\\\")):
        load_images(df["path"], 8, cache_dir=tmp_path)


def test_masks_binary_and_missing(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    paths = list(df["mask"])
    paths[2] = ""
    m = load_masks(paths, 8, cache_dir=tmp_path)
    assert m.shape == (24, 8, 8) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert m[2].sum() == 0 and m[0].sum() > 0 and m[0, 4, 4] == 1 and m[0, 0, 0] == 0
    assert m.present.tolist() == [i != 2 for i in range(24)]


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GLOMLIB_CACHE", str(tmp_path / "cc"))
    assert default_cache_dir() == tmp_path / "cc"
    monkeypatch.delenv("GLOMLIB_CACHE")
    assert default_cache_dir().parts[-2:] == ("data", "cache")


def test_bad_arguments(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    with pytest.raises(ValueError, match="interpolation"):
        load_images(df["path"], 8, cache_dir=tmp_path, interpolation="bogus")
    with pytest.raises(ValueError, match="no image paths"):
        load_images([], 8, cache_dir=tmp_path)


@pytest.mark.realdata
def test_real_data_cache_small(real_manifest, tmp_path):
    df = read_manifest(real_manifest, positive_label="GS").iloc[:24]
    x = load_images(df["path"], 32, cache_dir=tmp_path, hashes=df["sha256"])
    assert x.shape == (24, 32, 32, 3) and 0 < x.mean() < 255


def _old_cache_decode(path, size):
    """The cache's decoder before glomlib.data.images existed (kept here to prove the pixels did not move)."""
    import cv2

    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


@pytest.mark.realdata
def test_real_patches_and_masks_identical_to_the_old_decoder(real_manifest, tmp_path):
    """images.read_rgb / read_mask (what the cache stores) give the very pixels the old cv2 cache decode gave."""
    import cv2

    from glomlib.data.images import image_size, read_mask, read_rgb

    df = read_manifest(real_manifest, positive_label="GS")
    df = df.iloc[np.linspace(0, len(df) - 1, 6).astype(int)].reset_index(drop=True)  # all three centres
    for size in (64, 224):
        x = load_images(df["path"], size, cache_dir=tmp_path, hashes=df["sha256"])
        m = load_masks(df["mask"], size, cache_dir=tmp_path)
        for i, (p, mp) in enumerate(zip(df["path"], df["mask"])):
            old = _old_cache_decode(p, size)
            assert np.array_equal(read_rgb(p, size), old) and np.array_equal(x[i], old)
            grey = cv2.imdecode(np.fromfile(mp, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            grey = grey if grey.ndim == 2 else grey.max(axis=2)  # BGR max == RGB max
            old_mask = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA) > 127
            assert np.array_equal(read_mask(mp, size), old_mask) and np.array_equal(m[i], old_mask)
            assert read_rgb(p).shape[1::-1] == image_size(p)
