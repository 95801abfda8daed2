"""The run-folder layout, known once.

Where a run's models, folds, predictions, metrics and reports live, how
``latest`` is found (the newest match under ``runs/`` by modification time) and how a run argument resolves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from glomlib.core.errors import ModelFileMissing
from glomlib.core.paths import DEFAULT_RUNS_ROOT

MODEL = "model.safetensors"  # a fine-tune run's final model
ENCODER = "encoder.safetensors"  # an SSL run's encoder
PREDICTIONS, METRICS, FOLDS = "predictions.csv", "metrics.json", "folds.csv"
FOLD_MODELS = "checkpoints/*/" + MODEL  # one model per (fraction, seed, fold) of a fine-tune run
FINALS_DIR = "finals"  # a fine-tune run's other final models (final-seed<N>.safetensors), bundle members
# a pipeline run (glomlib run): one sub-folder per notebook
SSL_DIR, FINETUNE_DIR = "ssl", "finetune"


def is_latest(spec: Any) -> bool:
    return spec is None or str(spec) in ("latest", "")


def newest(root: str | Path, pattern: str, keep: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    """Files matching ``pattern`` anywhere under ``root`` that ``keep`` accepts, newest last."""
    root = Path(root)
    found = [p for p in root.glob(f"**/{pattern}") if keep(p)] if root.exists() else []
    return sorted(found, key=lambda p: p.stat().st_mtime)


def latest_model(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    found = newest(root, MODEL)
    if not found:
        raise ModelFileMissing(
            f"model='latest' but no model.safetensors exists under {Path(root).resolve()}. Run a fine-tune first "
            "(notebook 03 or `glomlib finetune`), or pass --model PATH."
        )
    return found[-1]


def model_path(spec: str | Path, root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """A model file from a path, a run folder (``<dir>/model.safetensors``) or ``latest`` (not checked further)."""
    if is_latest(spec):
        return latest_model(root)
    p = Path(spec)
    return p / MODEL if p.is_dir() else p


def latest_encoder(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    found = newest(root, ENCODER)
    if not found:
        raise ModelFileMissing(
            f"init='glom' with ssl_checkpoint='latest' but no encoder.safetensors exists under "
            f"{Path(root).resolve()}. Run notebook 02 (SimCLR pretraining) first, or pass "
            "ssl_checkpoint=<path to encoder.safetensors>."
        )
    return found[-1]


def encoder_path(spec: str | Path | None, root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """An SSL encoder from a file, an SSL run folder or ``latest``; FileNotFoundError when it does not exist."""
    if is_latest(spec):
        return latest_encoder(root)
    p = Path(spec)
    p = p / ENCODER if p.is_dir() else p
    if not p.is_file():
        raise ModelFileMissing(
            f"ssl_checkpoint={spec!r}: {p} does not exist. Give the encoder.safetensors written by notebook 02 "
            "(or its run folder), or 'latest'."
        )
    return p


def _has_models(pred: Path) -> bool:
    d = pred.parent
    return d.parent.name != "checkpoints" and ((d / MODEL).is_file() or any(d.glob(FOLD_MODELS)))


def resolve_run(run: str | Path = "latest", root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """A fine-tune run folder: ``run`` itself (or a file in it), or (``latest``) the newest folder under ``root``
    holding ``predictions.csv`` and a model (fold models under ``checkpoints/`` or a final model)."""
    if is_latest(run):
        found = newest(root, PREDICTIONS, _has_models)
        if not found:
            raise FileNotFoundError(
                f"run='latest' but no fine-tune run (a folder with predictions.csv and its models) exists "
                f"under {Path(root).resolve()}. Run notebook 03 first, or pass run=<fine-tune run folder>."
            )
        return found[-1].parent
    p = Path(run)
    p = p.parent if p.is_file() else p
    if not (p / PREDICTIONS).is_file():
        raise FileNotFoundError(
            f"run={str(run)!r}: {p / PREDICTIONS} does not exist. Pass the output folder of a fine-tune run "
            "(notebook 03), which holds predictions.csv and model.safetensors."
        )
    return p


def finished_runs(root: str | Path = DEFAULT_RUNS_ROOT) -> list[Path]:
    """Finished fine-tune run folders (metrics.json, predictions.csv and folds.csv) under ``root``, newest last."""
    done = newest(root, METRICS, lambda p: (p.parent / PREDICTIONS).is_file() and (p.parent / FOLDS).is_file())
    return [p.parent for p in done]


def latest_fold_model(
    read_meta: Callable[[Path], dict[str, Any]], root: str | Path = DEFAULT_RUNS_ROOT
) -> tuple[Path, list[str]]:
    """The newest fold model trained on all labels under ``root`` with the slides it never saw (``read_meta``:
    the model file's metadata; a file it refuses with ValueError is skipped)."""
    for f in reversed(newest(root, FOLD_MODELS)):
        try:
            m = read_meta(f)
        except ValueError:
            continue
        if m.get("test_slides") and float(m.get("label_fraction", 1.0)) >= 1:
            return f, [str(s) for s in m["test_slides"]]
    raise ModelFileMissing(
        f"model latest with manifest auto: no fold model (checkpoints/<fold>/model.safetensors with test slides) "
        f"under {Path(root).resolve()}. Run a fine-tune first (notebook 03 or `glomlib finetune`), or pass model "
        "and a labelled manifest of slides the model never saw."
    )


def fold_model_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).glob(FOLD_MODELS))


# ------------------------------------------------------------------------- a pipeline run (glomlib run)
def ssl_encoder(run: str) -> str:
    return f"{run}/{SSL_DIR}/{ENCODER}"


def finetune_dir(run: str, init: str | None = None) -> str:
    return f"{run}/{FINETUNE_DIR}" + (f"/{init}" if init else "")


def finetune_outputs(run_dir: Path, inits: Iterable[str]) -> dict[str, tuple[Path, Path]]:
    """``{init: (metrics.json, model file)}`` of a pipeline run's fine-tune steps (the files may not exist)."""
    return {i: (run_dir / FINETUNE_DIR / i / METRICS, run_dir / FINETUNE_DIR / i / MODEL) for i in inits}
