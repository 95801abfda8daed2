"""Run-folder lookups of ``glomlib evaluate`` and ``predict``.

Which model file, which slides it never saw, and a
manifest read against the model's class names."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from glomlib.core import runs
from glomlib.core.config import ConfigError
from glomlib.data.manifest import ManifestError, ManifestWarning, read_manifest
from glomlib.models.files import read_model_meta


def resolve_model(spec: str | Path) -> Path:
    """A model file from a path, a run folder (its ``model.safetensors``) or ``latest``; refused (exit 5, saying
    which file to pass) when it is missing or not a model file."""
    p = runs.model_path(spec)
    read_model_meta(p if p.is_file() or not Path(spec).is_dir() else Path(spec))
    return p


def latest_fold_model(root: str | Path = "runs") -> tuple[Path, list[str]]:
    """``model latest`` with ``manifest auto``: the newest fold model (all labels) and the slides it never saw."""
    return runs.latest_fold_model(read_model_meta, root)


def held_out_slides(model_path: Path) -> tuple[Path, list[str]]:
    """``manifest auto``: a model that knows the slides it never saw — a fold model (metadata ``test_slides``), or
    the first fold model of a fine-tune run whose final model is given. Returns (model file, held-out slides)."""
    meta = read_model_meta(model_path)
    if meta.get("test_slides"):
        return model_path, [str(s) for s in meta["test_slides"]]
    for f in runs.fold_model_files(model_path.parent):
        m = read_model_meta(f)
        if m.get("test_slides") and float(m.get("label_fraction", 1.0)) >= 1:
            return f, [str(s) for s in m["test_slides"]]
    raise ConfigError(
        f"manifest auto: {model_path} was trained on every slide of its data and no fold model with "
        "test slides lies beside it; pass a labelled manifest of slides it never saw (manifest PATH)."
    )


def _labels_in(manifest: str | Path) -> list[str]:
    try:
        col = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["label"])["label"].str.strip()
    except (ValueError, KeyError, OSError):
        return []  # no label column (or no file): read_manifest says what is wrong
    return sorted(set(col) - {""})


def read_for_model(manifest: str | Path, meta: Mapping[str, Any], require_labels: bool) -> pd.DataFrame:
    """``manifest`` read with the model's class names: labels must be those names, but one class alone is
    normal input (a biopsy without GS). The manifest's warnings (e.g. RGBA files) are summed up in one line."""
    pos, neg = str(meta["positive_label"]), meta.get("negative_label") or None
    found = _labels_in(manifest)
    if neg and set(found) - {pos, neg}:
        raise ManifestError(
            f"{manifest}: labels {found} are not the model's classes {pos!r} (positive) and {neg!r} (negative); "
            "rename them in the manifest's label column (or leave labels empty to only predict).",
            [],
        )
    one_negative = bool(neg) and found == [neg]  # the reader needs its positive label to occur: swap, then fix y
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ManifestWarning)
        df = read_manifest(
            manifest,
            positive_label=neg if one_negative else pos,
            negative_label=pos if one_negative else neg,
            require_labels=require_labels,
        )
    if one_negative:
        df["y"] = (df["label"] == pos).astype(int).where(df["label"] != "", -1)
        df.attrs.update(positive_label=pos, negative_label=neg)
    notes = df.attrs.get("warnings") or [str(w.message) for w in caught if issubclass(w.category, ManifestWarning)]
    if notes:
        first = str(notes[0]).splitlines()[-1].strip()
        print(f"{manifest}: {len(notes)} note(s) on its images, e.g. {first} (`glomlib data check` lists them).")
    return df


def held_out_rows(data: str | Path, slides: list[str], meta: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of the manifest ``data`` (read and validated) whose slide is in ``slides``."""
    df = read_for_model(data, meta, require_labels=True)
    sub = df[df["slide"].astype(str).isin(set(slides))].reset_index(drop=True)
    missing = sorted(set(slides) - set(sub["slide"].astype(str)))
    if missing or sub.empty:
        raise ConfigError(
            f"manifest auto: the model's held-out slides {missing or slides} are not in {data}; pass "
            "data (the model's training manifest) or a manifest PATH."
        )
    return sub
