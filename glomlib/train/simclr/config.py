"""The SimCLR step's configuration (notebook 02's parameters) and the names of its run-folder files."""

from __future__ import annotations

import dataclasses

from glomlib.core.config import ConfigError, StepConfig
from glomlib.core.runtime import PRECISIONS
from glomlib.data.stain import STAIN_METHODS
from glomlib.models.backbones import BACKBONES
from glomlib.train.augment import AugmentParams

OPTIMIZERS = ("adamw", "lars", "sgd")
CHECKPOINT_NAME = "checkpoint.pt"
ENCODER_NAME = "encoder.safetensors"
HISTORY_NAME = "history.csv"
# Config fields that may differ between an interrupted run and its resumption (they do not change the training).
RESUME_FREE_FIELDS = ("resume", "out", "device", "num_workers", "progress", "cache_dir", "final_probe")


@dataclasses.dataclass(frozen=True)
class SSLConfig(StepConfig):
    """Parameters of notebook 02 (SimCLR pretraining). Every field is a notebook parameter."""

    # fmt: off
    data: str = "data/glomeruli-pas/manifest.csv"  # manifest CSV (labels optional; used only for the kNN monitor)
    out: str = "auto"                    # run folder; "auto" = runs/<UTC stamp>-ssl
    backbone: str = "efficientnet_lite0"  # resnet18 | resnet50 | efficientnet_lite0 (offline ImageNet weights)
    ssl_init: str = "imagenet"           # scratch | imagenet (domain-adaptive continued pretraining)
    image_size: int = 96                 # pixels (the study used 512)
    epochs: int = 10                     # passes over all patches
    batch_size: int = 64                 # patches per step, per process (per GPU under torchrun)
    lr: float = 5e-05                    # peak learning rate after warm-up (5e-5 measured for continued pretraining)
    optimizer: str = "adamw"             # adamw | lars | sgd
    weight_decay: float = 1e-4           # L2 penalty (not on biases / norm layers)
    momentum: float = 0.9                # sgd / lars only
    warmup_epochs: int = 1               # linear warm-up (at most half of all steps), then cosine decay to 0
    temperature: float = 0.2             # NT-Xent temperature
    freeze_bn: bool = True               # keep the backbone's BatchNorm statistics frozen (eval mode) while training
    bn_recalibrate: bool = True          # re-estimate BatchNorm statistics on clean images before saving/monitoring
    proj_hidden_dim: int = 512           # projection head width (discarded after pretraining)
    proj_out_dim: int = 128              # embedding size of the loss
    seed: int = 0                        # random seed
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    precision: str = "auto"              # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32
    channels_last: bool = True          # memory layout of images and weights
    num_workers: int = 0                 # data-loader workers (CLAHE + batching); 0 = main process
    resume: bool = False                 # continue the run in `out` from its last completed epoch
    max_images: int = 0                  # use only the first N images (0 = all)
    exclude_centre: str = ""             # leave this centre's images out (an encoder for leave-one-centre-out glom fine-tunes); "" = all
    stain_normalize: str = ""            # "" (off) | reinhard | macenko: every image stain-normalised once, into the image cache (as in 03)
    steps_per_epoch: int = 0             # cap steps per epoch (0 = a full pass); for smoke tests/benchmarks
    positive_label: str = ""             # positive label of the kNN monitor ("" = the one dataset.json names)
    knn_every: int = 5                   # kNN monitor every N epochs (0 = off)
    knn_k: int = 20                      # neighbours of the kNN monitor
    folds: int = 5                       # slide-grouped folds of the kNN monitor and the final probe
    cache_dir: str = ""                  # image cache folder ("" = glomlib's default)
    final_probe: bool = True             # after training: linear probe of the encoder vs a random (and ImageNet) one
    progress: bool = True                # tqdm progress bars
    # augmentations (see glomlib.train.augment): probability 0 switches one off
    crop_p: float = 1.0                  # probability of a random resized crop
    crop_scale_min: float = 0.35         # smallest crop (fraction of the area)
    crop_scale_max: float = 1.0          # largest crop
    hflip_p: float = 0.5                 # horizontal flip probability
    vflip_p: float = 0.5                 # vertical flip probability
    rotate_p: float = 1.0                # rotation probability
    rotate_degrees: float = 180.0        # max angle (180 = any angle)
    rotate_fill: str = "reflection"      # reflection | border | zeros
    jitter_p: float = 0.5                # colour jitter probability
    brightness: float = 0.2              # colour jitter strength
    contrast: float = 0.2                # colour jitter strength
    saturation: float = 0.1              # colour jitter strength
    hue: float = 0.0                     # 0..0.5 (stain hue shift)
    grayscale_p: float = 0.0             # grayscale probability
    blur_p: float = 0.0                  # gaussian blur probability
    clahe_p: float = 0.2                 # CLAHE probability (OpenCV)
    clahe_clip: float = 2.0              # CLAHE clip limit
    clahe_grid: int = 8                  # CLAHE tiles per side
    stain_augment: float = 0.0           # HED (optical-density) stain jitter strength; 0 = off, 0.05 typical
    # fmt: on

    def validate(self) -> None:
        checks = [
            (self.backbone in BACKBONES, f"backbone={self.backbone!r}; choose one of {list(BACKBONES)}."),
            (self.ssl_init in ("scratch", "imagenet"), f"ssl_init={self.ssl_init!r}; choose 'scratch' or 'imagenet'."),
            (self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r}; choose one of {list(OPTIMIZERS)}."),
            (self.precision in PRECISIONS, f"precision={self.precision!r}; choose one of {list(PRECISIONS)}."),
            *(
                (int(getattr(self, n)) >= 1, f"{n}={getattr(self, n)} must be >= 1.")
                for n in ("epochs", "batch_size", "image_size")
            ),
            (self.batch_size >= 2, "batch_size must be >= 2 (SimCLR needs negatives in the batch)."),
            (self.lr > 0 and self.temperature > 0, "lr and temperature must be > 0."),
            (self.warmup_epochs >= 0, f"warmup_epochs={self.warmup_epochs} must be >= 0."),
            (
                self.stain_normalize in STAIN_METHODS,
                f"stain_normalize={self.stain_normalize!r}: choose one of {list(STAIN_METHODS)} ('' = off).",
            ),
            (not (self.resume and self.out in ("", "auto")), "resume=True needs out=<the run folder to continue>."),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.augment_params()  # validates the augmentation fields
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def augment_params(self) -> AugmentParams:
        return AugmentParams.from_config(self.__dict__)
