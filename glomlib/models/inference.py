"""Running a model on uint8 patches under the runtime plan: class probabilities and frozen features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from glomlib.core import runtime
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD


def _plan(p: runtime.Plan | None, device: Any) -> runtime.Plan:
    if p is not None:
        return p
    return runtime.plan(device if device is not None else "cpu", "fp32")


@torch.no_grad()
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
    p = _plan(plan, device)
    was_training = model.training
    model.eval()
    if p.channels_last:
        model.to(memory_format=torch.channels_last)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = runtime.to_input(images[i : i + batch_size], mean, std, p)
                with runtime.autocast(p):
                    logits = model(x)
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
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
    """Features ``(N, D)`` (float32 numpy) of uint8 NHWC images through ``backbone`` in eval mode.

    ``image_size``: resize (bilinear, antialiased) to this size first when the images differ.
    The backbone's train/eval mode is restored afterwards.
    """
    p = _plan(plan, device)
    was_training = backbone.training
    backbone.eval()
    backbone.to(p.device)
    if p.channels_last:
        backbone.to(memory_format=torch.channels_last)
    feats = []
    try:
        for i in range(0, len(images_uint8), batch_size):
            x = runtime.to_input(np.asarray(images_uint8[i : i + batch_size]), mean, std, p)
            if image_size is not None and x.shape[-1] != image_size:
                x = torch.nn.functional.interpolate(
                    x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
                )
            with runtime.autocast(p):
                f = backbone(x)
            feats.append(f.float().cpu().numpy())
    finally:
        backbone.train(was_training)
    if not feats:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(feats).astype(np.float32)
