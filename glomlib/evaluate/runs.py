"""Read finished fine-tune run folders (what notebook 03 writes) for comparison (04) and error analysis (05)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from glomlib.core import runs

#: The initialisations notebook 03 fine-tunes from (our SSL encoder, ImageNet weights, random weights).
INITS = ("glom", "imagenet", "scratch")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a finished fine-tune run folder: ``{"dir", "config", "metrics", "predictions", "folds"}``.

    Runs written before ``label_fractions`` existed get a ``label_fraction`` prediction column (their one fraction),
    so every reader can filter by fraction the same way."""

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise FileNotFoundError(
            f"{run_dir} has no metrics.json; is it a finished fine-tune run folder (notebook 03 or `glomlib finetune`)?"
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pred = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    if "label_fraction" not in pred.columns:
        pred["label_fraction"] = float(metrics.get("label_fraction", 1.0))
    return {
        "dir": run_dir,
        "config": json.loads((run_dir / "config.json").read_text()),
        "metrics": metrics,
        "predictions": pred,
        "folds": pd.read_csv(run_dir / "folds.csv", keep_default_na=False),
    }


def label_fractions(run: dict[str, Any]) -> list[float]:
    """The label fractions a loaded run holds (sorted)."""
    by = run["metrics"].get("by_fraction")
    if by:
        return sorted(float(v["label_fraction"]) for v in by.values())
    return [float(run["metrics"].get("label_fraction", 1.0))]


def fraction_view(run: dict[str, Any], fraction: float) -> dict[str, Any]:
    """The run restricted to one label fraction: same keys as :func:`load_run`, with ``metrics["summary"]``,
    ``metrics["per_fold"]`` and ``predictions`` of that fraction only. KeyError if the run lacks it."""
    fraction = float(fraction)
    have = label_fractions(run)
    if not any(abs(f - fraction) < 1e-9 for f in have):
        raise KeyError(f"{run['dir']} has no label fraction {fraction:g} (it has {[f'{f:g}' for f in have]}).")
    by = run["metrics"].get("by_fraction")
    metrics = dict(run["metrics"])
    if by:
        part = by[f"{fraction:g}"]
        metrics.update(
            summary=part["summary"],
            per_fold=part["per_fold"],
            pooled_oof=part.get("pooled_oof"),
            label_fraction=fraction,
        )
    pred = run["predictions"]
    pred = pred[(pred["label_fraction"].astype(float) - fraction).abs() < 1e-9].reset_index(drop=True)
    return {**run, "metrics": metrics, "predictions": pred}


def fold_models(run_dir: str | Path, label_fraction: float | None = None) -> pd.DataFrame:
    """The fold models kept by a fine-tune run: one row per (label_fraction, seed, fold) with columns
    ``label_fraction, seed, fold, model`` (path to its model.safetensors) and ``test_slides`` (a set).

    Empty for runs written before fold models were kept (nothing under ``checkpoints/*/model.safetensors``)."""
    rows = []
    for model in runs.fold_model_files(run_dir):
        res = model.parent / "result.json"
        if not res.is_file():
            continue
        doc = json.loads(res.read_text())
        row = doc["row"]
        frac = float(row.get("label_fraction", 1.0))
        if label_fraction is not None and abs(frac - float(label_fraction)) > 1e-9:
            continue
        rows.append(
            {
                "label_fraction": frac,
                "seed": int(row["seed"]),
                "fold": int(row["fold"]),
                "model": model,
                "test_slides": frozenset(doc["test_slides"]),
            }
        )
    cols = ["label_fraction", "seed", "fold", "model", "test_slides"]
    return pd.DataFrame(rows, columns=cols).sort_values(["label_fraction", "seed", "fold"]).reset_index(drop=True)


def starting_weights(run_dir: str | Path) -> dict[str, Any]:
    """What a fine-tune run's networks started from, read from its fold results: ``init``, and for glom the SSL
    encoder's ``ssl_init`` (weights SimCLR continued from), ``ssl_epochs``, ``exclude_centre`` (centres each encoder
    never saw, one per held-out centre) and ``same_data`` (True when the encoder was pretrained, without labels, on
    this run's data fingerprint: every image, the test folds' included). Fields it cannot tell are None."""
    run_dir = Path(run_dir)
    init = str(json.loads((run_dir / "config.json").read_text()).get("init"))
    out: dict[str, Any] = {"init": init}
    if init != "glom":
        return out
    metas = []
    for res in sorted(run_dir.glob("checkpoints/*/result.json")):
        metas.append(json.loads(res.read_text()).get("init_info", {}).get("ssl_meta") or {})
    meta = metas[0] if metas else {}
    prov = run_dir / "provenance.json"
    fp = json.loads(prov.read_text()).get("data_fingerprint") if prov.is_file() else None
    cfg = meta.get("config") or {}
    cfg = json.loads(cfg) if isinstance(cfg, str) else cfg
    out.update(ssl_init=meta.get("ssl_init"), ssl_epochs=int(meta["epochs"]) if meta.get("epochs") else None)
    out["exclude_centre"] = sorted({str(m.get("exclude_centre")) for m in metas if m.get("exclude_centre")})
    same = meta.get("data_fingerprint") == fp if meta.get("data_fingerprint") and fp else None
    out["same_data"] = same and not out["exclude_centre"] and not cfg.get("max_images")
    return out
