"""Classifier heads: a backbone plus dropout and a one-logit linear head (positive class)."""

from __future__ import annotations

import torch
from torch import nn

from glomlib.models.backbones import build_backbone


class FinetuneModel(nn.Module):
    """Backbone -> dropout -> linear head with one logit (positive class)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x))).squeeze(1)


def build_classifier(
    backbone_name: str, feature_dim: int | None = None, backbone: nn.Module | None = None
) -> FinetuneModel:
    """A :class:`FinetuneModel` around ``backbone`` (or a fresh scratch ``backbone_name``)."""
    if backbone is None:
        backbone, feature_dim = build_backbone(backbone_name, init="scratch")
    return FinetuneModel(backbone, int(feature_dim))
