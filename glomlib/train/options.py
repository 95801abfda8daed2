"""Choices and ranges shared by the training steps' configs (one source: the tables they are checked against)."""

from __future__ import annotations

from typing import Annotated, Literal

import annotated_types as at

from glomlib.data.stain import STAIN_METHODS
from glomlib.models.backbones import BACKBONES

Backbone = Literal[tuple(BACKBONES)]  # resnet18 | resnet50 | efficientnet_lite0
StainMethod = Literal[STAIN_METHODS]  # "" (off) | reinhard | macenko
StainChoice = Literal[(*STAIN_METHODS, "auto")]  # a StainMethod, or "auto": the default of the step (per init in 03)
Folds = Annotated[int, at.Ge(2)]  # cross-validation needs at least 2 folds
StainAugment = Annotated[float, at.Ge(0), at.Lt(1)]  # HED jitter strength, 0 = off
