"""The fine-tune step's configuration (notebook 03's parameters), parsed at construction and never changed after."""

from __future__ import annotations

import dataclasses

from glomlib.core.config import ConfigError, StepConfig
from glomlib.core.runtime import PRECISIONS
from glomlib.data.stain import STAIN_METHODS
from glomlib.evaluate.runs import INITS

# Config fields that may change between an interrupted run and its resumption.
RESUME_FREE_FIELDS = {"resume", "device", "num_workers", "out", "progress", "final_model", "cache_dir"}


def _as_list(value) -> list:
    """``2``, ``"0,1"`` or ``"[0, 1]"`` (the shell / papermill -p) or a list -> a list."""
    if isinstance(value, str):
        return [x for x in value.strip("[]() ").replace(" ", "").split(",") if x]
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(StepConfig):
    """Parameters of notebook 03 (``notebooks/03_finetune.ipynb``) and of ``glomlib finetune``."""

    # fmt: off
    init: str = "glom"                      # glom | imagenet | scratch
    ssl_checkpoint: str = "latest"          # glom only: encoder.safetensors, an SSL run folder, or "latest"; with cv=centre it may contain {centre}: one encoder per held-out centre (pretrained without it)
    imagenet_weights: str = ""              # imagenet only: local weights file ("" = the offline default)
    data: str = "data/glomeruli-pas/manifest.csv"  # manifest CSV
    out: str = "auto"                       # run folder; "auto" = runs/<stamp>-finetune-<init>
    backbone: str = "efficientnet_lite0"    # resnet18 | resnet50 | efficientnet_lite0
    image_size: int = 96                    # pixels (square) fed to the network
    epochs: int = 15                        # maximum epochs per fold
    batch_size: int = 32                    # images per step
    lr: float = 1e-3                        # AdamW learning rate (cosine decay, 1 warm-up epoch)
    weight_decay: float = 1e-4              # AdamW weight decay
    folds: int = 5                          # slide-grouped cross-validation folds
    seeds: list = dataclasses.field(default_factory=lambda: [0])  # one CV repetition per seed
    label_fractions: list = dataclasses.field(default_factory=lambda: [1.0])  # shares of the training labels, one CV per share (stratified; test folds untouched)
    min_steps: int = -1                     # step budget per fold: -1 = as many optimiser steps as with all labels (small label fractions make several passes per epoch), 0 = one pass per epoch, N = at least N steps
    positive_label: str = ""                # label of the positive class ("" = the one dataset.json names)
    label_source: str = ""                  # training labels: "" the label column, "consensus" the raters' majority (label_<rater> columns), or a rater name
    device: str = "auto"                    # auto | cpu | cuda | cuda:N | mps
    patience: int = 4                       # early stopping: epochs without validation improvement
    val_fraction: float = 0.2               # share of the training slides held out for model selection
    augment: bool = True                    # flips, 90-degree rotations, colour jitter during training
    stain_augment: float = 0.0              # HED (optical-density) stain augmentation strength during training; 0 = off, 0.05 typical
    stain_normalize: str = ""               # "" (off) | reinhard (fixed LAB colour target) | macenko (fixed stain vectors, torchstain): applied in training and prediction
    cv: str = "slide"                       # slide: slide/patient-grouped folds | centre: leave one centre out (folds = number of centres)
    num_workers: int = 0                    # accepted for profiles; unused: images live in memory, batches are augmented in place
    resume: bool = False                    # continue an interrupted run in `out` (finished folds are kept)
    final_model: bool = True                # also train on all labelled images and save model.safetensors
    precision: str = "auto"                 # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32
    cache_dir: str = ""                     # image cache folder ("" = glomlib.data.cache default)
    progress: bool = True                   # tqdm progress bars
    # fmt: on

    def __post_init__(self) -> None:
        """The shell and papermill forms of the list fields become lists (seeds as ints, fractions as sorted
        floats); ``{center}`` is spelled ``{centre}``. Nothing changes the config after this."""
        try:
            self.seeds = [int(s) for s in _as_list(self.seeds)]
        except (TypeError, ValueError):
            raise ConfigError(f"seeds={self.seeds!r}: give integer seeds, e.g. [0, 1].") from None
        fr = _as_list(self.label_fractions)
        try:
            fr = [float(f) for f in fr]
        except (TypeError, ValueError):
            raise ConfigError(f"label_fractions={fr!r}: give numbers in (0, 1], e.g. [0.1, 1.0].") from None
        if len(set(fr)) != len(fr):
            raise ConfigError(f"label_fractions={fr}: a fraction is listed twice.")
        self.label_fractions = sorted(fr)
        self.ssl_checkpoint = str(self.ssl_checkpoint).replace("{center}", "{centre}")

    @property
    def per_centre_encoders(self) -> bool:
        """glom with one encoder per held-out centre (``ssl_checkpoint`` holds ``{centre}``)."""
        return self.init == "glom" and "{centre}" in self.ssl_checkpoint

    def validate(self) -> None:
        checks = [
            (self.init in INITS, f"init={self.init!r}: choose one of {list(INITS)}."),
            (bool(self.seeds), "seeds must list at least one integer seed, e.g. [0]."),
            (
                self.cv in ("slide", "centre", "center"),
                f"cv={self.cv!r}: choose 'slide' (slide-grouped folds) or 'centre' (leave one centre out).",
            ),
            (
                self.stain_normalize in STAIN_METHODS,
                f"stain_normalize={self.stain_normalize!r}: choose one of {list(STAIN_METHODS)} ('' = off).",
            ),
            (
                0 <= float(self.stain_augment) < 1,
                f"stain_augment={self.stain_augment}: must be in [0, 1) (0 = off, 0.05 typical).",
            ),
            (
                bool(self.label_fractions) and all(0 < f <= 1 for f in self.label_fractions),
                f"label_fractions={self.label_fractions}: each must be in (0, 1], e.g. [0.1, 1.0].",
            ),
            (
                int(self.min_steps) >= -1,
                f"min_steps={self.min_steps}: -1 (as many steps as with all labels), 0 (off) or N > 0.",
            ),
            (0 < float(self.val_fraction) < 1, f"val_fraction={self.val_fraction}: must be in (0, 1)."),
            (int(self.folds) >= 2, f"folds={self.folds}: need at least 2 folds for cross-validation."),
            *(
                (int(getattr(self, n)) >= 1, f"{n}={getattr(self, n)}: must be a positive integer.")
                for n in ("epochs", "batch_size", "image_size")
            ),
            (self.precision in PRECISIONS, f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._validate_centre_placeholder()

    def _validate_centre_placeholder(self) -> None:
        if "{centre}" not in self.ssl_checkpoint:
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
