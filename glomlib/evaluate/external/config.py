"""The settings of ``glomlib evaluate`` and notebook 06."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import annotated_types as at

from glomlib.core.config import ConfigError, Device, NonNegativeInt, PositiveInt, StepConfig
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.evaluate import biopsy as B
from glomlib.evaluate.metrics import LOCAL_THRESHOLD_RULE


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(StepConfig):
    """Parameters of notebook 06 (``notebooks/06_external_validation.ipynb``) and of ``glomlib evaluate``."""

    model: str = "latest"  # model.safetensors (or bundle.safetensors), a fine-tune run folder, or "latest" (newest under runs/; with manifest auto the newest fold model)
    manifest: str = "auto"  # labelled manifest CSV to evaluate on (path, label, slide[, patient, center]); auto: the test slides of a fold model of the run (see data)
    data: str = str(DEFAULT_MANIFEST)  # the model's own training manifest, used only by manifest auto
    out: str = "auto"  # new output folder; "auto" = runs/<stamp>-evaluate
    by: Literal["slide", "patient"] = "slide"  # biopsy unit: slide | patient
    biopsy_rule: str = "auto"  # oxford_m | gs_bands | cuts:0.1,0.2 | auto (gs_bands for GS, else oxford_m)
    n_boot: NonNegativeInt = 1000  # slide-bootstrap resamples for the 95-percent CIs
    seed: int = 0  # bootstrap seed
    n_bins: PositiveInt = 10  # bins of the reliability diagram and ECE
    device: Device = "auto"  # auto | cpu | cuda
    batch_size: PositiveInt = 64  # images per forward pass
    cache_dir: str = ""  # image cache folder ("" = glomlib.data.cache default)
    tta: bool = False  # test-time augmentation: mean over the 8 flips/90-degree rotations (8x the compute)

    def validate(self) -> None:
        if self.biopsy_rule != "auto":
            try:
                B.parse_rule(self.biopsy_rule)
            except ValueError as e:
                raise ConfigError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class ExternalValidationConfig(EvaluateConfig):
    """Parameters of notebook 06: :class:`EvaluateConfig` plus the threshold-transfer experiment."""

    local_sizes: list[int] = dataclasses.field(default_factory=lambda: [10, 20, 50, 100])  # local labels to re-fit on
    repeats: PositiveInt = 20  # random draws per size
    calibration: Literal["platt", "isotonic"] = "platt"  # platt | isotonic
    threshold_rule: str = LOCAL_THRESHOLD_RULE  # fixed:0.5 | youden | sensitivity:0.9, on calibrated probabilities
    # fmt: off
    pool_fraction: Annotated[float, at.Gt(0), at.Lt(1)] = 0.5  # share of the external slides that may give local labels; the rest are the test slides
    # fmt: on

    def validate(self) -> None:
        super().validate()
        if any(n < 2 for n in self.local_sizes):
            raise ConfigError(f"local_sizes={self.local_sizes}: each must be at least 2 (both classes needed).")
