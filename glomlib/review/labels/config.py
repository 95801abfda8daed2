"""The label review's parameters and inputs: a run's out-of-fold predictions joined with its manifest."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from glomlib.core.config import ConfigError, Device, NonNegativeInt, PositiveInt, StepConfig
from glomlib.core.paths import project_root
from glomlib.data.manifest import read_manifest
from glomlib.review.explain.inputs import load_predictions

ID_DIGITS = 16  # hex digits of the sha256 used as image_id


@dataclasses.dataclass(frozen=True)
class ReviewConfig(StepConfig):
    """Parameters of the label review (``glomlib review``)."""

    run: str = "latest"  # fine-tune run folder (predictions.csv); latest means the newest under runs/
    data: str = ""  # manifest (masks, hashes); empty means the one named in the run's config.json
    out: str = "auto"  # output folder (never overwritten); auto means runs/<stamp>-review
    label_fraction: float = 1.0  # which label fraction's predictions to use (nearest available)
    confident: float = 0.8  # out-of-fold confidence at or above which an error counts as confident
    n_items: PositiveInt = 60  # images listed on the page and in the CSV (most suspicious first)
    n_pairs: NonNegativeInt = 20  # most similar conflicting-label pairs checked as possible duplicates
    min_pair_percentile: float = 99.0  # a pair counts only if its similarity is above this percentile of all pairs
    encoder: str = "imagenet"  # embedding encoder: imagenet (offline weights), scratch, or an encoder.safetensors
    backbone: str = "efficientnet_lite0"  # backbone of the embedding encoder
    feature_size: int = 96  # pixels (square) fed to the encoder for the embeddings
    whiten: NonNegativeInt = 64  # PCA-whitening components for the embeddings (0 turns whitening off)
    thumb_size: int = 160  # thumbnail size on the page (pixels)
    show_paths: bool = True  # false: no file names on the page or in the CSV (they may carry slide IDs)
    batch_size: PositiveInt = 64  # images per forward pass
    device: Device = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        if not 0.5 <= self.confident < 1:
            raise ConfigError(f"confident={self.confident}: must be in [0.5, 1).")
        if not 0 <= self.min_pair_percentile < 100:
            raise ConfigError(f"min_pair_percentile={self.min_pair_percentile}: must be in [0, 100).")
        if self.feature_size < 16 or self.thumb_size < 16:
            raise ConfigError("feature_size and thumb_size must be at least 16 pixels.")


def run_manifest(run_dir: Path, data: str = "") -> Path:
    """The manifest of a fine-tune run: ``data`` when given, else ``config.json``'s ``data`` (relative paths
    resolve against the current folder, then the project root)."""
    if data:
        p = Path(data)
    else:
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(
                f"{cfg_path} does not exist, so the run's manifest is unknown; pass data=<manifest>."
            )
        p = Path(json.loads(cfg_path.read_text()).get("data", ""))
        if not p.is_absolute() and not p.exists():
            p = project_root() / p
    if not p.is_file():
        raise FileNotFoundError(f"manifest {p} does not exist; pass data=<the manifest the run was trained on>.")
    return p


def load_review_inputs(run_dir: str | Path, data: str = "", label_fraction: float = 1.0) -> pd.DataFrame:
    """Out-of-fold predictions of a run joined with its manifest: one row per labelled image with
    path, slide, center, label, y, prob, mask, sha256, image_id, manifest_row."""
    run_dir = Path(run_dir)
    pred = load_predictions(run_dir, label_fraction)
    pos = pred.loc[pred["y"] == 1, "label"]
    neg = pred.loc[pred["y"] == 0, "label"]
    if not len(pos) or not len(neg):
        raise ValueError(f"{run_dir / 'predictions.csv'} needs images of both classes for a label review.")
    mpath = run_manifest(run_dir, data)
    man = read_manifest(mpath, positive_label=str(pos.iloc[0]), negative_label=str(neg.iloc[0]), require_labels=False)
    by_path = man.set_index("path")
    missing = [p for p in pred["path"] if p not in by_path.index]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of {run_dir / 'predictions.csv'} are not in manifest {mpath}, "
            f"e.g. {missing[:3]}; pass data=<the manifest the run was trained on>."
        )
    m = by_path.loc[pred["path"]]
    out = pred[["path", "label", "y", "prob"]].copy()
    for c in ("slide", "center", "mask", "sha256"):
        out[c] = m[c].to_numpy()
    out["manifest_row"] = m["row"].to_numpy()
    out["image_id"] = [h[:ID_DIGITS] for h in out["sha256"]]
    out.attrs.update(manifest=str(mpath), positive_label=str(pos.iloc[0]), negative_label=str(neg.iloc[0]))
    return out.reset_index(drop=True)
