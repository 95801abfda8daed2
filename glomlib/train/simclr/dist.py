"""Several processes under torchrun: process group, rank queries (lightly.utils.dist), barrier, broadcast."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from lightly.utils import dist as lightly_dist


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (known before the process group exists)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> bool:
    """``init_process_group`` when launched by torchrun with WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    ``$GLOMLIB_DDP=1`` under torchrun initialises it even for one process (DDP, SyncBatchNorm and NCCL exercised
    on a single GPU, as ``benchmarks/gpu_check.py`` does)."""
    _, world, _ = dist_info()
    one = world == 1 and os.environ.get("GLOMLIB_DDP") == "1" and "MASTER_ADDR" in os.environ
    if (world <= 1 and not one) or dist.is_initialized():
        return dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def process_group() -> str:
    """The torch.distributed backend of this run ('' when no process group is initialised)."""
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else ""


def is_main() -> bool:
    return lightly_dist.rank() == 0 if dist.is_initialized() else dist_info()[0] == 0


def rank_and_world() -> tuple[int, int]:
    return lightly_dist.rank(), lightly_dist.world_size()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_str(s: str) -> str:
    """Rank 0's ``s`` on every rank."""
    if not dist.is_initialized():
        return s
    obj = [s]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


def mean_over_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over all ranks (itself without a process group)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return float(t) / lightly_dist.world_size()
