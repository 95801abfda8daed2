"""glomlib.models.files: atomic saves, weights_only loads, encoder files with metadata."""

import pytest
import torch

from glomlib.models import backbones as models
from glomlib.models import files as checkpoint


def test_atomic_save_roundtrip_weights_only(tmp_path):
    obj = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "config": {"lr": 0.1, "name": "x"}, "hist": [1.0]}
    p = checkpoint.atomic_save(obj, tmp_path / "sub" / "ck.pt")
    back = checkpoint.load_checkpoint(p)
    assert back["epoch"] == 2 and torch.equal(back["model"]["w"], obj["model"]["w"])
    assert [f.name for f in p.parent.iterdir()] == ["ck.pt"]  # no temp file left


class Evil:
    pass


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        checkpoint.load_checkpoint(p)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    p = checkpoint.atomic_save({"v": 1}, tmp_path / "ck.pt")

    import glomlib.core.io.atomic as io

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"v": 2}, p)
    assert checkpoint.load_checkpoint(p)["v"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["ck.pt"]


def test_encoder_roundtrip_and_metadata(tmp_path):
    torch.manual_seed(0)
    a, _ = models.build_backbone("resnet18")
    p = checkpoint.save_encoder(
        tmp_path / "enc.safetensors", a, {"backbone": "resnet18", "image_size": 64, "data_fingerprint": "abc"}
    )
    torch.manual_seed(1)
    b, _ = models.build_backbone("resnet18")
    meta = checkpoint.load_encoder_into(b, p, expect_backbone="resnet18")
    assert meta["image_size"] == 64 and meta["data_fingerprint"] == "abc"
    assert meta["mean"] == list(models.IMAGENET_MEAN)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_encoder_errors_are_clear(tmp_path):
    a, _ = models.build_backbone("resnet18")
    with pytest.raises(checkpoint.EncoderFileError, match="does not exist"):
        checkpoint.load_encoder_into(a, tmp_path / "missing.safetensors")
    p = checkpoint.save_encoder(tmp_path / "enc.safetensors", a, {"backbone": "resnet18"})
    lite, _ = models.build_backbone("efficientnet_lite0")
    with pytest.raises(checkpoint.EncoderFileError, match="resnet18"):
        checkpoint.load_encoder_into(lite, p, expect_backbone="efficientnet_lite0")
    with pytest.raises(checkpoint.EncoderFileError, match="does not fit"):
        checkpoint.load_encoder_into(lite, p)
    with pytest.raises(ValueError, match="backbone"):
        checkpoint.save_encoder(tmp_path / "x.safetensors", a, {})
