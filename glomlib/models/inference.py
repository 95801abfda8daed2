"""Running a model on uint8 patches under the runtime plan: class probabilities and frozen features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from glomlib.core import runtime
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD


def _plan(p: runtime.Plan | None, device: Any) -> runtime.Plan:
    return p if p is not None else runtime.plan(device if device is not None else "cpu", "fp32")


def _outputs(model: nn.Module, images: Any, p: runtime.Plan, batch_size: int, mean, std, size: int | None = None):
    """The model's float outputs batch by batch, in eval mode; its train/eval mode is restored."""
    was_training = model.training
    model.eval()
    if p.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                batch = images[i : i + batch_size]
                x = runtime.to_input(batch if isinstance(batch, torch.Tensor) else np.asarray(batch), mean, std, p)
                if size is not None and x.shape[-1] != size:  # bilinear, antialiased
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                with runtime.autocast(p):
                    out = model(x)
                yield out.float()
    finally:
        model.train(was_training)


def predict_probs(
    model: nn.Module,
    images: Any,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    plan: runtime.Plan | None = None,
    device: Any = None,
    batch_size: int = 128,
) -> np.ndarray:
    """Positive-class probabilities (sigmoid of the one logit) for uint8 NHWC images (tensor or numpy)."""
    out = [torch.sigmoid(o).cpu().numpy() for o in _outputs(model, images, _plan(plan, device), batch_size, mean, std)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def extract_features(
    backbone: nn.Module,
    images_uint8: Any,
    batch_size: int = 64,
    *,
    plan: runtime.Plan | None = None,
    device: Any = None,
    image_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Features ``(N, D)`` (float32) of uint8 NHWC images, resized to ``image_size`` first when they differ."""
    p = _plan(plan, device)
    backbone.to(p.device)
    feats = [f.cpu().numpy() for f in _outputs(backbone, images_uint8, p, batch_size, mean, std, image_size)]
    return np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, 0), dtype=np.float32)
