"""uint8 images to normalised model input, and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from glomlib.core.runtime.hardware import Plan


def to_input(
    batch_uint8: Any,
    mean: Sequence[float],
    std: Sequence[float],
    p: Plan | None = None,
    *,
    device: torch.device | str | None = None,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """uint8 NHWC images (numpy or tensor) -> normalised float NCHW on the plan's device and memory format."""
    dev = p.device if p is not None else torch.device(device or "cpu")
    cl = p.channels_last if (p is not None and channels_last is None) else bool(channels_last)
    if isinstance(batch_uint8, torch.Tensor):
        x = batch_uint8
    else:
        arr = np.asarray(batch_uint8)
        x = torch.from_numpy(arr.copy() if not arr.flags.writeable else np.ascontiguousarray(arr))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if cl else x.contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float NCHW in [0, 1] -> (x - mean) / std."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x * s + m
