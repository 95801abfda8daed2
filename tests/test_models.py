"""glomlib.models.backbones: backbones, offline ImageNet weights, normalisation."""

import numpy as np
import pytest
import torch

from glomlib.models import backbones as models


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("efficientnet_lite0", 1280)])
def test_build_backbone_scratch_outputs_features(name, dim):
    torch.manual_seed(0)
    bb, d = models.build_backbone(name, "scratch")
    assert d == dim == models.feature_dim_of(name)
    bb.eval()
    with torch.no_grad():
        f = bb(torch.randn(2, 3, 32, 32))
    assert f.shape == (2, dim)


def test_unknown_backbone_and_init_are_clear():
    with pytest.raises(ValueError, match="resnet18"):
        models.build_backbone("vgg16")
    with pytest.raises(ValueError, match="init"):
        models.build_backbone("resnet18", init="glom")


def test_resnet_imagenet_offline_refuses_to_download(tmp_path, monkeypatch):
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torchvision cache
    monkeypatch.setenv("GLOMLIB_OFFLINE", "1")
    tried = []
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda *a, **k: tried.append(a))
    with pytest.raises(models.WeightsNotFoundError, match="GLOMLIB_OFFLINE=1 forbids") as e:
        models.build_backbone("resnet18", "imagenet")
    assert "imagenet_weights=<file>" in str(e.value) and "weights_path" in str(e.value)
    assert tried == []  # not even an attempt


def test_resnet_imagenet_failed_download_explains(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GLOMLIB_OFFLINE", raising=False)

    def no_network(url, *a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    with pytest.raises(models.WeightsNotFoundError, match="imagenet_weights=<file>") as e:
        models.build_backbone("resnet50", "imagenet")
    assert "resnet50-0676ba61.pth" in str(e.value) and "GLOMLIB_OFFLINE" in str(e.value)


def test_resnet_imagenet_downloads_through_torchvision_with_hash_check(tmp_path, monkeypatch):
    import torchvision
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GLOMLIB_OFFLINE", raising=False)
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None)
    calls = []

    def fake_download(url, *a, **k):  # what torch.hub does: store the file in the hub cache, return its state
        calls.append((url, k))
        d = models.torch_hub_checkpoint_dir()
        d.mkdir(parents=True, exist_ok=True)
        torch.save(ref.state_dict(), d / url.rsplit("/", 1)[1])
        return ref.state_dict()

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_download)
    bb, _ = models.build_backbone("resnet18", "imagenet")
    assert torch.equal(bb.conv1.weight, ref.conv1.weight)
    assert calls == [(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, {"progress": False, "check_hash": True})]
    assert (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    models.build_backbone("resnet18", "imagenet")  # now from the cache: no second download
    assert len(calls) == 1


def test_missing_explicit_weights_file_is_named(tmp_path):
    with pytest.raises(models.WeightsNotFoundError, match="nothere.pth"):
        models.build_backbone("resnet18", "imagenet", weights_path=tmp_path / "nothere.pth")


def test_resnet_imagenet_from_weights_path(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    p = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), p)
    bb, _ = models.build_backbone("resnet18", "imagenet", weights_path=p)
    assert torch.equal(bb.conv1.weight, ref.conv1.weight)


def test_efficientnet_lite0_imagenet_mapping_is_exact():
    src = torch.load(models.efficientnet_lite0_weights_file(), map_location="cpu", weights_only=True)
    bb, _ = models.build_backbone("efficientnet_lite0", "imagenet")
    sd = bb.state_dict()
    # every non-classifier tensor of the package file is in the model, bit for bit, in order
    src_vals = [v for k, v in src.items() if not k.startswith("_fc.")]
    assert len(src_vals) == len(sd)
    for (k, v), s in zip(sd.items(), src_vals):
        assert v.shape == s.shape, k
        assert torch.equal(v, s.to(v.dtype)), k


def test_efficientnet_lite0_imagenet_logits_are_sensible():
    """The mapped ImageNet classifier recognises a photo of a flower (a daisy-like dahlia) and a temple."""
    from sklearn.datasets import load_sample_image

    m = models.efficientnet_lite0_imagenet_classifier().eval()
    img = load_sample_image("china.jpg")[:, 106:533]  # centre square
    x = torch.nn.functional.interpolate(models.to_tensor_batch(img), size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        p = m(x).softmax(1)[0]
    top5 = set(p.topk(5).indices.tolist())
    assert top5 & {698, 442, 483, 497, 663, 832}  # palace, bell cote, castle, church, monastery, stupa
    assert float(p.max()) > 0.2  # far from uniform (0.001)


def test_mismatched_state_dict_fails_clearly():
    a = {"x": torch.zeros(3), "y": torch.zeros(2, 2)}
    with pytest.raises(models.WeightsMismatchError, match="shape"):
        models.map_state_dict_in_order(a, {"p": torch.zeros(3), "q": torch.zeros(2, 3)})
    with pytest.raises(models.WeightsMismatchError, match="one-to-one"):
        models.map_state_dict_in_order(a, {"p": torch.zeros(3)})


def test_to_tensor_batch_normalises_readonly_uint8():
    arr = np.full((2, 4, 4, 3), 255, np.uint8)
    arr.setflags(write=False)
    t = models.to_tensor_batch(arr)
    assert t.shape == (2, 3, 4, 4) and t.dtype == torch.float32
    expect = (1 - np.array(models.IMAGENET_MEAN)) / np.array(models.IMAGENET_STD)
    assert np.allclose(t[0, :, 0, 0].numpy(), expect, atol=1e-6)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        models.to_tensor_batch(np.zeros((2, 3, 4, 4), np.uint8))
