"""The dataset sidecar: ``dataset.json`` beside a manifest names its positive (and negative) label once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from glomlib.core.io import write_text_atomic
from glomlib.data.manifest.problems import ManifestError

DATASET_SIDECAR = "dataset.json"  # beside the manifest: {"positive_label": ..., "negative_label": ..., ...}
_PAIR = ("positive_label", "negative_label")


def dataset_info_path(manifest: str | os.PathLike) -> Path:
    """The ``dataset.json`` that describes the dataset of ``manifest`` (in the manifest's folder)."""
    return Path(manifest).expanduser().resolve().parent / DATASET_SIDECAR


def read_dataset_info(manifest: str | os.PathLike) -> dict:
    """The manifest's ``dataset.json`` as a dict; ``{}`` when there is none."""
    p = dataset_info_path(manifest)
    if not p.is_file():
        return {}
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(
            f'{p} is not valid JSON ({e}); it should hold e.g. {{"positive_label": "GS", "negative_label": "nonGS"}}.'
        ) from None
    if not isinstance(info, dict):
        raise ManifestError(f'{p} must hold a JSON object, e.g. {{"positive_label": "GS"}}.')
    return info


def write_dataset_info(manifest: str | os.PathLike, positive_label: str, negative_label: str = "", **extra) -> Path:
    """Write ``dataset.json`` beside ``manifest`` (atomically). Identical content is left as is; a sidecar
    naming another positive or negative label is never overwritten (an error says which file)."""
    p = dataset_info_path(manifest)
    info = {"positive_label": str(positive_label), "negative_label": str(negative_label), **extra}
    text = json.dumps(info, indent=2, sort_keys=False) + "\n"
    if p.exists():
        old = read_dataset_info(manifest)
        if [old.get(k) for k in _PAIR] != [info[k] for k in _PAIR]:
            raise FileExistsError(
                f"{p} already names positive_label={old.get('positive_label')!r}, negative_label={old.get('negative_label')!r}; refusing to overwrite it with {positive_label!r}/{negative_label!r}. Edit or remove it yourself."
            )
        if p.read_text() == text:
            return p
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(p, text)


def _labels_text(manifest: Path) -> str:
    try:
        labels = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["label"])["label"].str.strip()
    except (ValueError, KeyError, OSError):
        return "(no label column)"
    counts = labels[labels != ""].value_counts()
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "(none)"


def no_positive_label_message(manifest: str | os.PathLike, name_manifest: bool = True) -> str:
    mpath = Path(manifest).expanduser().resolve()
    side = dataset_info_path(mpath)
    which = f"which label of {mpath} is positive?" if name_manifest else "which label is positive?"
    return (
        f"{which} No positive_label was given and {side} "
        f"{'names none' if side.exists() else 'does not exist'}; labels found: {_labels_text(mpath)}. "
        f"Pass positive_label=<label> (--positive-label <label>), or write {side} with "
        '{"positive_label": "<label>"} (glomlib data fetch writes it for public datasets).'
    )


def resolve_positive_label(manifest: str | os.PathLike, positive_label: str = "") -> str:
    """``positive_label`` when given; else the one the manifest's ``dataset.json`` names; else a
    :class:`ManifestError` listing the labels found and saying how to name the positive one."""
    named = str(positive_label or read_dataset_info(manifest).get("positive_label") or "")
    if named:
        return named
    raise ManifestError(no_positive_label_message(manifest))
