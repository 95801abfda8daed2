"""The fine-tune step's configuration (notebook 03's parameters), checked when made and never changed after."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import annotated_types as at

from glomlib.core.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Precision,
    Seeds,
    StepConfig,
    Unique,
    budget_value,
)
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.evaluate.runs import INITS
from glomlib.train.options import Backbone, Folds, StainAugment, StainChoice

# Config fields that may change between an interrupted run and its resumption.
# (final_seeds and bundle_members change only what is trained and packed after the cross-validation.)
RESUME_FREE_FIELDS = {"resume", "device", "num_workers", "out", "progress", "final_model", "cache_dir"}
RESUME_FREE_FIELDS |= {"final_seeds", "bundle_members"}
RESUME_FREE_FIELDS |= {"precision"}  # the precision actually used is checked against the run's first folds instead
#: the final models' seeds are seeds[0] + FINAL_SEED_STEP * i (apart from every fold model's seed + 17 * fold)
FINAL_SEED_STEP = 1000


def _fractions(v: Any) -> bool:
    """each must be a share in (0, 1] or N labels per class spelt 'N/class', e.g. [1/class, 8/class, 0.1, 1.0]"""
    try:
        return len({budget_value(f) for f in v}) == len(v)
    except ValueError:
        return False


#: What ``stain_normalize="auto"`` means per init, decided by README's leave-one-centre-out table ("Stain options",
#: 3 held-out centres x 3 seeds): with Macenko, glom and imagenet had the lowest per-biopsy %GS error (hard calls) at
#: every unseen centre and the highest AUC at two of three (within 0.001 at the third); normalisation broke scratch (Reinhard lowered every AUC, Macenko VUHSK's to 0.551), so off.
AUTO_STAIN = {"glom": "macenko", "imagenet": "macenko", "scratch": ""}
Init = Literal[INITS]  # glom | imagenet | scratch
Fractions = Annotated[list[float | str], at.MinLen(1), Unique, at.Predicate(_fractions)]
MinSteps = Annotated[int, at.Ge(-1)]  # -1 = as many steps as with all labels, 0 = off, N > 0
ValFraction = Annotated[float, at.Gt(0), at.Lt(1)]
BundleMembers = Literal["finals", "folds+finals"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(StepConfig):
    """Parameters of notebook 03 (``notebooks/03_finetune.ipynb``) and of ``glomlib finetune``."""

    # fmt: off
    init: Init = "glom"                      # glom | imagenet | scratch
    ssl_checkpoint: str = "latest"           # glom only: encoder.safetensors, an SSL run folder, or "latest"; with cv=centre it may contain {centre}: one encoder per held-out centre (pretrained without it)
    imagenet_weights: str = ""               # imagenet only: local weights file ("" = the offline default)
    data: str = str(DEFAULT_MANIFEST)        # manifest CSV
    out: str = "auto"                        # run folder; "auto" = runs/<stamp>-finetune-<init>
    backbone: Backbone = "efficientnet_lite0"  # resnet18 | resnet50 | efficientnet_lite0
    image_size: PositiveInt = 96             # pixels (square) fed to the network
    epochs: PositiveInt = 15                 # maximum epochs per fold
    batch_size: PositiveInt = 32             # images per step
    lr: PositiveFloat = 1e-3                 # AdamW learning rate (cosine decay, 1 warm-up epoch)
    weight_decay: NonNegativeFloat = 1e-4    # AdamW weight decay
    folds: Folds = 5                         # slide-grouped cross-validation folds
    seeds: Seeds = dataclasses.field(default_factory=lambda: [0])  # one CV repetition per seed
    label_fractions: Fractions = dataclasses.field(default_factory=lambda: [1.0])  # label budgets, one CV each: shares of the training labels (0.05) or N labels per class ("4/class"); nested (smaller budgets are subsets of larger ones), the same for every init; test folds untouched
    min_steps: MinSteps = -1                 # step budget per fold: -1 = as many optimiser steps as with all labels (small label fractions make several passes per epoch), 0 = one pass per epoch, N = at least N steps
    positive_label: str = ""                 # label of the positive class ("" = the one dataset.json names)
    label_source: str = ""                   # training labels: "" the label column, "consensus" the raters' majority (label_<rater> columns), or a rater name
    device: str = "auto"                     # auto | cpu | cuda | cuda:N | mps
    patience: PositiveInt = 4                # early stopping: epochs without validation improvement
    val_fraction: ValFraction = 0.2          # share of the training slides held out for model selection
    augment: bool = True                     # flips, 90-degree rotations, colour jitter during training
    stain_augment: StainAugment = 0.0        # HED (optical-density) stain augmentation strength during training; 0 = off, 0.05 typical
    stain_normalize: StainChoice = "auto"    # auto = macenko for glom and imagenet, off for scratch (README's leave-one-centre-out table) | "" (off) | reinhard (fixed LAB colour target) | macenko (fixed stain vectors, torchstain): applied in training and prediction
    cv: Literal["slide", "centre", "center"] = "slide"  # slide: slide/patient-grouped folds | centre: leave one centre out (folds = number of centres)
    num_workers: NonNegativeInt = 0          # accepted for profiles; unused: images live in memory, batches are augmented in place
    resume: bool = False                     # continue an interrupted run in `out` (finished folds are kept)
    final_model: bool = True                 # also train on all labelled images and save model.safetensors
    final_seeds: PositiveInt = 3             # final models trained on all labelled images, each with its own seed (model.safetensors is the first); bundle.safetensors holds them all
    bundle_members: BundleMembers = "folds+finals"  # folds+finals (the fold models of every seed and the final models) | finals: what bundle.safetensors holds (README "Model bundles": folds+finals varied least at unseen centres)
    precision: Precision = "auto"            # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32
    cache_dir: str = ""                      # image cache folder ("" = glomlib.data.cache default)
    progress: bool = True                    # tqdm progress bars
    # fmt: on

    @property
    def encoder_spec(self) -> str:
        """``ssl_checkpoint`` with ``{center}`` spelt ``{centre}``."""
        return self.ssl_checkpoint.replace("{center}", "{centre}")

    @property
    def stain_method(self) -> str:
        """``stain_normalize`` with ``auto`` resolved for this init (:data:`AUTO_STAIN`): what is applied and saved."""
        return AUTO_STAIN[self.init] if self.stain_normalize == "auto" else self.stain_normalize

    @property
    def per_centre_encoders(self) -> bool:
        """glom with one encoder per held-out centre (``ssl_checkpoint`` holds ``{centre}``)."""
        return self.init == "glom" and "{centre}" in self.encoder_spec

    @property
    def fractions(self) -> list[float]:
        """The label budgets as numbers (:func:`glomlib.data.budget_value`: N/class is -N): N/class by N, then
        the shares ascending; the largest (max: the largest share, include 1.0) is the main result."""
        return sorted((budget_value(f) for f in self.label_fractions), key=lambda v: (v > 0, abs(v)))

    def validate(self) -> None:
        if "{centre}" not in self.encoder_spec:
            return
        if self.cv == "slide" or self.init != "glom":
            raise ConfigError(
                f"ssl_checkpoint={self.ssl_checkpoint!r} names a {{centre}} placeholder, which "
                "only leave-one-centre-out glom runs fill in: use init=glom with cv=centre, or "
                "give one encoder."
            )
        if self.final_model:
            raise ConfigError(
                f"ssl_checkpoint={self.ssl_checkpoint!r}: one encoder per held-out centre leaves "
                "no encoder for the final model, which trains on every centre. Pass "
                "final_model=false (the held-out folds are the result)."
            )
