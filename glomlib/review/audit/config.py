"""The audit's parameters and set-up: config, manifest reading (flawed manifests too), output folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.core import io as runs
from glomlib.core.config import ConfigError, StepConfig
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.data.manifest import data_fingerprint, read_dataset_info, read_manifest, validate_manifest
from glomlib.data.public import ensure_default_manifest

FLAG_COLUMNS = ["row", "path", "slide", "center", "label", "reason", "value", "threshold", "detail"]


@dataclasses.dataclass(frozen=True)
class AuditConfig(StepConfig):
    """Parameters of notebook 01 (names == the notebook's ``parameters`` cell)."""

    data: str = str(DEFAULT_MANIFEST)  # manifest CSV
    out: str = "auto"  # output folder; "auto" = runs/<stamp>-audit
    positive_label: str = ""  # the positive class label ("" = the one the manifest's dataset.json names)
    stats_size: int = 224  # images are resized to this square size before blur / colour statistics
    white_level: int = 215  # a pixel is background when all three channels are >= this (0-255)
    background_max: float = 0.5  # flag an image when more than this share of its pixels is background
    blur_min: float = 50.0  # flag an image when the variance of its Laplacian (grey, stats_size) is below this
    stain_z: float = 4.0  # flag an image when its tissue OD (any channel) is > stain_z robust SDs from its centre
    # fmt: off
    near_dup_distance: int = 8  # perceptual-hash Hamming distance (of 64 bits) at or below which images are near-duplicates
    # fmt: on
    rotated_dup_distance: int = 4  # same, between an image and rotated/flipped copies of another; -1 = skip rotations
    mask_area_min: float = 0.05  # flag a mask covering less than this share of its patch (includes empty masks)
    folds: int = 5  # folds used to check duplicates across folds (same grouping as fine-tuning)
    montage_n: int = 8  # example images per class / centre in the montages
    seed: int = 0  # sampling seed for montages and folds

    def validate(self) -> None:
        if not 0 < self.background_max <= 1:
            raise ConfigError(f"background_max={self.background_max}: must be in (0, 1].")
        if not 0 <= self.white_level <= 255:
            raise ConfigError(f"white_level={self.white_level}: must be in 0..255.")
        if not 0 <= self.near_dup_distance <= 64:
            raise ConfigError(f"near_dup_distance={self.near_dup_distance}: must be in 0..64 (64-bit hash).")
        if not -1 <= self.rotated_dup_distance <= 64:
            raise ConfigError(f"rotated_dup_distance={self.rotated_dup_distance}: must be in -1..64 (-1 = off).")
        if self.stats_size < 16:
            raise ConfigError(f"stats_size={self.stats_size}: use at least 16 pixels.")
        if self.stain_z <= 0 or self.blur_min < 0:
            raise ConfigError("stain_z must be > 0 and blur_min >= 0.")


def prepare(cfg: AuditConfig):
    """Read the manifest (building the default one from the shared mirror if needed) and create ``out``.

    Returns ``(df, out_dir)``. The audit must run on flawed manifests too, so rows the manifest reader
    rejects are not fatal: they are listed in ``<out>/manifest_skipped.csv`` (and become flags via
    :func:`manifest_flags`), except exact byte-duplicates, which are kept so the duplicate analysis shows
    them (with their folds). The config and provenance are written into ``out_dir``.
    """
    data = Path(cfg.data)
    if not data.exists() and cfg.data == str(DEFAULT_MANIFEST):
        ensure_default_manifest(data)
    if not data.exists():
        raise FileNotFoundError(
            f"data={cfg.data!r}: manifest {data.resolve()} does not exist. Pass the path of a "
            "manifest CSV (glomlib data from-folder builds one from a folder of images)."
        )
    positive = _audit_positive_label(data, cfg.positive_label)
    out = Path(runs.new_run_dir("runs", "audit") if cfg.out == "auto" else runs.ensure_new_dir(cfg.out))
    skipped_csv = out / "manifest_skipped.csv"
    df = read_manifest(data, positive_label=positive, require_labels=False, on_error="skip", skipped_out=skipped_csv)
    df = _readd_content_duplicates(df, data, positive, skipped_csv)
    cfg.save(out / "config.json")
    runs.write_provenance(out, cfg, data_fingerprint(df))
    return df, out


def _audit_positive_label(manifest: Path, positive_label: str) -> str:
    """The audit uses the positive label only to stratify folds (symmetric in the two classes), so a
    ``positive_label`` absent from the manifest (or none given and no ``dataset.json`` naming one) is not
    fatal here: the rarer label stands in, and the notebook says so."""
    if not positive_label:
        positive_label = str(read_dataset_info(manifest).get("positive_label") or "")
    try:
        labels = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["label"])["label"].str.strip()
    except (ValueError, KeyError):
        return positive_label  # no label column: read_manifest reports what is wrong
    counts = labels[labels != ""].value_counts()
    if len(counts) == 0 or positive_label in counts.index:
        return positive_label
    chosen = str(counts.index[-1])
    print(
        f"positive_label={positive_label!r} occurs in no row of {manifest} (labels: {dict(counts)}); the audit "
        f"uses {chosen!r} as the positive class (it only affects how folds are stratified). "
        "Pass positive_label=... to choose."
    )
    return chosen


def _readd_content_duplicates(df: pd.DataFrame, manifest: Path, positive_label: str, skipped_csv: Path) -> pd.DataFrame:
    """Put back rows the reader skipped only because their bytes equal another row's (the audit reports them)."""
    if not skipped_csv.exists():
        return df
    sk = pd.read_csv(skipped_csv, dtype=str, keep_default_na=False)
    dup_rows = {
        int(r)
        for r, why in zip(sk["row"], sk["reason"])
        if all(part.strip().startswith("duplicate-content") for part in why.split(" | "))
    }
    if not dup_rows:
        return df
    full, _ = validate_manifest(manifest, positive_label=positive_label, require_labels=False)
    add = full[full["row"].isin(dup_rows)].copy()
    add["y"] = [1 if lab == positive_label else (-1 if lab == "" else 0) for lab in add["label"]]
    out = pd.concat([df, add[[c for c in df.columns if c in add.columns]]], ignore_index=True)
    out = out.sort_values("row").reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out


def manifest_flags(out: str | Path, df: pd.DataFrame) -> pd.DataFrame:
    """Rows the manifest reader rejected (from ``<out>/manifest_skipped.csv``) as flags (reason ``manifest``)."""
    p = Path(out) / "manifest_skipped.csv"
    if not p.exists():
        return pd.DataFrame(columns=FLAG_COLUMNS)
    sk = pd.read_csv(p, dtype=str, keep_default_na=False)
    recs = [
        {
            "row": int(r["row"]),
            "path": r["path"],
            "slide": r["slide"],
            "center": "",
            "label": r["label"],
            "reason": "manifest",
            "value": np.nan,
            "threshold": "",
            "detail": r["reason"],
        }
        for _, r in sk.iterrows()
    ]
    return pd.DataFrame(recs, columns=FLAG_COLUMNS)
