"""The learning-rate schedule of both training steps: linear warm-up, then cosine decay to 0, per optimiser step."""

from __future__ import annotations

import torch
from lightly.utils.scheduler import CosineWarmupScheduler


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> CosineWarmupScheduler:
    """lightly's scheduler, stepped once per optimiser step: factor ``(s + 1) / warmup`` during warm-up, then
    ``0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))``. lightly's cosine reaches 0 one step before its
    ``max_epochs``, so it gets ``total + 1``: the last training step keeps a small non-zero rate."""
    return CosineWarmupScheduler(opt, warmup_steps, total_steps + 1, end_value=0.0)
