"""Run-folder lookups of ``glomlib evaluate``: which model file, and which slides it never saw."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from glomlib.core.config import ConfigError
from glomlib.data.manifest import read_manifest
from glomlib.models.files import read_model_meta


def find_latest_model(root: str | Path = "runs") -> Path:
    """Newest ``model.safetensors`` under ``root`` (by modification time)."""
    root = Path(root)
    found = sorted(root.glob("**/model.safetensors"), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if not found:
        raise FileNotFoundError(
            f"model='latest' but no model.safetensors exists under {root.resolve()}. Run a "
            "fine-tune first (notebook 03 or `glomlib finetune`), or pass --model PATH."
        )
    return found[-1]


def resolve_model(spec: str | Path) -> Path:
    """A model file from a path, a run folder (``<dir>/model.safetensors``) or ``latest``."""
    if str(spec) in ("latest", ""):
        return find_latest_model("runs")
    p = Path(spec)
    if p.is_dir():
        p = p / "model.safetensors"
    read_model_meta(p)  # clear error when missing or not a model file
    return p


def latest_fold_model(root: str | Path = "runs") -> tuple[Path, list[str]]:
    """The newest fold model (all labels) under ``root`` with the slides it never saw (``model latest`` with
    ``manifest auto``)."""
    root = Path(root)
    found = sorted(root.glob("**/checkpoints/*/model.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for f in found:
        try:
            m = read_model_meta(f)
        except ValueError:
            continue
        if m.get("test_slides") and float(m.get("label_fraction", 1.0)) >= 1:
            return f, [str(s) for s in m["test_slides"]]
    raise FileNotFoundError(
        f"model latest with manifest auto: no fold model (checkpoints/<fold>/model.safetensors with "
        f"test slides) under {root.resolve()}. Run a fine-tune first (notebook 03 or `glomlib "
        "finetune`), or pass model and a labelled manifest of slides the model never saw."
    )


def held_out_slides(model_path: Path) -> tuple[Path, list[str]]:
    """``manifest auto``: a model that knows the slides it never saw — a fold model (metadata ``test_slides``), or
    the first fold model of a fine-tune run whose final model is given. Returns (model file, held-out slides)."""
    meta = read_model_meta(model_path)
    if meta.get("test_slides"):
        return model_path, [str(s) for s in meta["test_slides"]]
    folds = sorted(model_path.parent.glob("checkpoints/*/model.safetensors"))
    for f in folds:
        m = read_model_meta(f)
        if m.get("test_slides") and float(m.get("label_fraction", 1.0)) >= 1:
            return f, [str(s) for s in m["test_slides"]]
    raise ConfigError(
        f"manifest auto: {model_path} was trained on every slide of its data and no fold model with "
        "test slides lies beside it; pass a labelled manifest of slides it never saw (manifest PATH)."
    )


def held_out_rows(data: str | Path, slides: list[str], meta: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of the manifest ``data`` (read and validated) whose slide is in ``slides``."""
    df = read_manifest(
        data,
        positive_label=meta["positive_label"],
        negative_label=meta.get("negative_label") or None,
        require_labels=True,
    )
    sub = df[df["slide"].astype(str).isin(set(slides))].reset_index(drop=True)
    missing = sorted(set(slides) - set(sub["slide"].astype(str)))
    if missing or sub.empty:
        raise ConfigError(
            f"manifest auto: the model's held-out slides {missing or slides} are not in {data}; pass "
            "data (the model's training manifest) or a manifest PATH."
        )
    return sub
