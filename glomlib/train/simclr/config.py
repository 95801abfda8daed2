"""The SimCLR step's configuration (notebook 02's parameters) and the names of its run-folder files."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import annotated_types as at

from glomlib.core.config import (
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Precision,
    Probability,
    StepConfig,
)
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.train.augment import AugmentParams
from glomlib.train.options import Backbone, Folds, StainAugment, StainMethod

CHECKPOINT_NAME = "checkpoint.pt"
ENCODER_NAME = "encoder.safetensors"
HISTORY_NAME = "history.csv"
# Config fields that may differ between an interrupted run and its resumption (they do not change the training).
RESUME_FREE_FIELDS = ("resume", "out", "device", "num_workers", "progress", "cache_dir", "final_probe")
BatchSize = Annotated[int, at.Ge(2)]  # SimCLR needs negatives in the batch
Hue = Annotated[float, at.Ge(0), at.Le(0.5)]


@dataclasses.dataclass(frozen=True)
class SSLConfig(StepConfig):
    """Parameters of notebook 02 (SimCLR pretraining). Every field is a notebook parameter."""

    # fmt: off
    data: str = str(DEFAULT_MANIFEST)        # manifest CSV (labels optional; used only for the kNN monitor)
    out: str = "auto"                        # run folder; "auto" = runs/<UTC stamp>-ssl
    backbone: Backbone = "efficientnet_lite0"  # resnet18 | resnet50 | efficientnet_lite0 (offline ImageNet weights)
    ssl_init: Literal["scratch", "imagenet"] = "imagenet"  # scratch | imagenet (domain-adaptive continued pretraining)
    image_size: PositiveInt = 96             # pixels (the study used 512)
    epochs: PositiveInt = 10                 # passes over all patches
    batch_size: BatchSize = 64               # patches per step, per process (per GPU under torchrun)
    lr: PositiveFloat = 5e-05                # peak learning rate after warm-up (5e-5 measured for continued pretraining)
    optimizer: Literal["adamw", "lars", "sgd"] = "adamw"  # adamw | lars | sgd
    weight_decay: NonNegativeFloat = 1e-4    # L2 penalty (not on biases / norm layers)
    momentum: NonNegativeFloat = 0.9         # sgd / lars only
    warmup_epochs: NonNegativeInt = 1        # linear warm-up (at most half of all steps), then cosine decay to 0
    temperature: PositiveFloat = 0.2         # NT-Xent temperature
    freeze_bn: bool = True                   # keep the backbone's BatchNorm statistics frozen (eval mode) while training
    bn_recalibrate: bool = True              # re-estimate BatchNorm statistics on clean images before saving/monitoring
    proj_hidden_dim: PositiveInt = 512       # projection head width (discarded after pretraining)
    proj_out_dim: PositiveInt = 128          # embedding size of the loss
    seed: int = 0                            # random seed
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"            # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32
    channels_last: bool = True               # memory layout of images and weights
    num_workers: NonNegativeInt = 0          # data-loader workers (CLAHE + batching); 0 = main process
    resume: bool = False                     # continue the run in `out` from its last completed epoch
    max_images: NonNegativeInt = 0           # use only the first N images (0 = all)
    exclude_centre: str = ""                 # leave this centre's images out (an encoder for leave-one-centre-out glom fine-tunes); "" = all
    stain_normalize: StainMethod = "macenko"  # macenko (03's auto for glom: README's leave-one-centre-out table) | reinhard | "" (off): every image stain-normalised once, into the image cache; use 03's option
    steps_per_epoch: NonNegativeInt = 0      # cap steps per epoch (0 = a full pass); for smoke tests/benchmarks
    positive_label: str = ""                 # positive label of the kNN monitor ("" = the one dataset.json names)
    knn_every: NonNegativeInt = 5            # kNN monitor every N epochs (0 = off)
    knn_k: PositiveInt = 20                  # neighbours of the kNN monitor
    folds: Folds = 5                         # slide-grouped folds of the kNN monitor and the final probe
    cache_dir: str = ""                      # image cache folder ("" = glomlib's default)
    final_probe: bool = True                 # after training: linear probe of the encoder vs a random (and ImageNet) one
    progress: bool = True                    # tqdm progress bars
    # augmentations (see glomlib.train.augment): probability 0 switches one off
    crop_p: Probability = 1.0                # probability of a random resized crop
    crop_scale_min: Fraction = 0.35          # smallest crop (fraction of the area)
    crop_scale_max: Fraction = 1.0           # largest crop
    hflip_p: Probability = 0.5               # horizontal flip probability
    vflip_p: Probability = 0.5               # vertical flip probability
    rotate_p: Probability = 1.0              # rotation probability
    rotate_degrees: NonNegativeFloat = 180.0  # max angle (180 = any angle)
    rotate_fill: Literal["reflection", "border", "zeros"] = "reflection"  # reflection | border | zeros
    jitter_p: Probability = 0.5              # colour jitter probability
    brightness: NonNegativeFloat = 0.2       # colour jitter strength
    contrast: NonNegativeFloat = 0.2         # colour jitter strength
    saturation: NonNegativeFloat = 0.1       # colour jitter strength
    hue: Hue = 0.0                           # 0..0.5 (stain hue shift)
    grayscale_p: Probability = 0.0           # grayscale probability
    blur_p: Probability = 0.0                # gaussian blur probability
    clahe_p: Probability = 0.2               # CLAHE probability (OpenCV)
    clahe_clip: PositiveFloat = 2.0          # CLAHE clip limit
    clahe_grid: PositiveInt = 8              # CLAHE tiles per side
    stain_augment: StainAugment = 0.0        # HED (optical-density) stain jitter strength; 0 = off, 0.05 typical
    # fmt: on

    def validate(self) -> None:
        if self.resume and self.out in ("", "auto"):
            raise ConfigError("resume=True needs out=<the run folder to continue>.")
        try:
            self.augment_params()  # crop_scale_min <= crop_scale_max, image_size >= 8
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def augment_params(self) -> AugmentParams:
        return AugmentParams.from_config(self.__dict__)
