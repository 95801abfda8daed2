"""The SimCLR model (backbone + lightly's projection head), its loss, optimiser and BatchNorm handling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from glomlib.models.backbones import build_backbone, to_tensor_batch
from glomlib.train.simclr.config import SSLConfig


class SimCLR(nn.Module):
    """Backbone + lightly's SimCLR projection head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def build_model(cfg: SSLConfig) -> SimCLR:
    backbone, dim = build_backbone(cfg.backbone, init=cfg.ssl_init)
    return SimCLR(backbone, dim, cfg.proj_hidden_dim, cfg.proj_out_dim)


def simclr_loss(model: nn.Module, criterion: nn.Module, v0: torch.Tensor, v1: torch.Tensor):
    """NT-Xent of two view batches in one forward pass -> ``(loss, z0)`` (view 0's projections, for the monitor)."""
    z = model(torch.cat([v0, v1]))
    z0, z1 = z.float().chunk(2)
    with torch.autocast(device_type=z.device.type, enabled=False):  # the loss in float32 even under bf16
        loss = criterion(z0, z1)
    return loss, z0.detach()


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_backbone_bn_eval(model: SimCLR) -> None:
    """Freeze the backbone's BatchNorm running statistics (the affine parameters still train)."""
    for m in _batchnorms(model.backbone):
        m.eval()


@torch.no_grad()
def recalibrate_bn(backbone, images, image_size: int, device, batch_size=128, channels_last=False, max_images=2048):
    """Re-estimate every BatchNorm's running statistics on clean (un-augmented) images, in place; eval mode.

    During SimCLR they track augmented views; downstream uses clean patches (on glomeruli-pas this alone moved a
    frozen-feature probe from 0.946 to 0.974 AUC)."""
    backbone = revert_sync_batchnorm(backbone)  # SyncBN would wait for the other ranks
    bns = _batchnorms(backbone)
    if not bns:
        return backbone.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    backbone.train()
    idx = np.arange(len(images))
    if len(idx) > max_images:  # a fixed random subset
        idx = np.sort(np.random.default_rng(0).choice(len(idx), max_images, replace=False))
    for part in np.array_split(idx, max(1, math.ceil(len(idx) / batch_size))):  # no batch of 1
        x = to_tensor_batch(np.asarray(images[part]), device=device, channels_last=channels_last)
        if x.shape[-1] != image_size:
            x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
        backbone(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return backbone.eval()


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace SyncBatchNorm layers (DDP on GPUs) by plain BatchNorm2d with the same state, recursively."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        ).to(next(module.buffers()).device)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in list(module.named_children()):
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def embedding_spread(z: torch.Tensor) -> float:
    """Std over the batch of L2-normalised embeddings, averaged over dimensions: ~1/sqrt(d) when healthy, -> 0
    when the embeddings collapse to one point."""
    return float(nn.functional.normalize(z.float(), dim=1).std(dim=0).mean())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay (and, for LARS, no layer-wise adaptation) for biases and norm parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def warmup_steps(warmup_epochs: int, steps_per_epoch: int, total_steps: int) -> int:
    """``warmup_epochs`` epochs of steps, at most half of all steps (a short run still decays its rate)."""
    return min(int(warmup_epochs) * int(steps_per_epoch), int(total_steps) // 2)


def build_optimizer(cfg: SSLConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    from lightly.utils.lars import LARS

    return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_training(cfg: SSLConfig, device: Any, channels_last: bool, distributed: bool = False):
    """``(model, optimiser, NT-Xent loss)`` of a SimCLR run, for :func:`pretrain` and the benchmarks (seed torch
    first for reproducible initial weights)."""
    from lightly.loss import NTXentLoss

    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(cfg, model), NTXentLoss(temperature=cfg.temperature, gather_distributed=distributed)
