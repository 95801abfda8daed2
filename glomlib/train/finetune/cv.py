"""The fine-tune step: data and run folder once, then every (label fraction, seed, fold) model, the metrics and
the final model. The config arrives validated and is never changed; per-run values (the resolved positive
label, the SSL encoder files) are derived once in :class:`_Run` and passed down."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from glomlib.core import progress as live
from glomlib.core import runtime
from glomlib.core.config import ConfigError
from glomlib.core.io import (
    ensure_new_dir,
    new_run_dir,
    open_for_resume,
    run_status,
    write_csv_atomic,
    write_json_atomic,
    write_provenance,
)
from glomlib.core.paths import DEFAULT_MANIFEST, DEFAULT_RUNS_ROOT
from glomlib.data.cache import load_images, stain_report
from glomlib.data.manifest import data_fingerprint, read_manifest
from glomlib.data.splits import assign_folds, fold_table, inner_validation
from glomlib.data.stain import write_stain_report
from glomlib.evaluate import metrics as M
from glomlib.models.heads import build_classifier
from glomlib.models.inference import predict_probs
from glomlib.train.finetune.config import RESUME_FREE_FIELDS, FinetuneConfig
from glomlib.train.finetune.encoder import ssl_encoders
from glomlib.train.finetune.save import model_meta, save_final_model, save_fold_model
from glomlib.train.finetune.train import subsample_labels, train_one


@dataclasses.dataclass
class FinetuneResult:
    out: Path
    predictions: Any  # pandas DataFrame (out-of-fold)
    per_fold: Any  # pandas DataFrame
    summary: dict
    folds: Any  # pandas DataFrame (slide -> fold per seed)
    model_path: Path | None
    summaries: dict = dataclasses.field(default_factory=dict)  # label fraction ("0.1") -> summary


@dataclasses.dataclass
class _Run:
    """What the whole run shares, derived once from the config and the data."""

    cfg: FinetuneConfig
    df: pd.DataFrame
    labels: tuple[str, str]  # (positive, negative): the positive resolved from dataset.json when cfg says ""
    fingerprint: str
    encoders: dict[str | None, Path]  # see ssl_encoders
    out: Path
    plan: runtime.Plan
    images: torch.Tensor
    y: np.ndarray


def fold_dir_name(label_fraction: float, seed: int, fold: int) -> str:
    """``checkpoints/`` sub-folder of one (label fraction, seed, fold): ``seed0-fold3`` for all labels,
    ``frac0.1-seed0-fold3`` for a fraction."""
    frac = float(label_fraction)
    return f"seed{seed}-fold{fold}" if frac >= 1 else f"frac{frac:g}-seed{seed}-fold{fold}"


def _load_data(cfg: FinetuneConfig) -> tuple[pd.DataFrame, str, str]:
    if Path(cfg.data) == DEFAULT_MANIFEST and not Path(cfg.data).exists():
        from glomlib.data.public import ensure_default_manifest

        ensure_default_manifest(cfg.data)
    df = read_manifest(cfg.data, positive_label=cfg.positive_label, require_labels=True, label_source=cfg.label_source)
    pos = df.attrs["positive_label"]  # resolved from the manifest's dataset.json when cfg.positive_label == ""
    neg = df.attrs.get("negative_label") or next(iter(sorted(set(df["label"]) - {pos, ""})), "")
    if int((df["y"] == 1).sum()) == 0:
        raise ConfigError(
            f"positive_label={pos!r} matches no image of {cfg.data}; its labels are "
            f"{sorted(set(df['label']))}. Pass the right positive_label (e.g. GS for glomeruli-pas)."
        )
    return df.reset_index(drop=True), pos, neg


def _prepare_out(cfg: FinetuneConfig, cfg_dict: dict[str, Any], fingerprint: str) -> Path:
    """A new run folder, or with resume=True the unfinished run in ``out`` made from the same data and training
    settings; anything else is refused, listing the differences (ResumeError)."""
    if cfg.out in ("auto", "", None):
        if cfg.resume:
            raise ConfigError("resume=True needs out=<the interrupted run folder>.")
        return new_run_dir(DEFAULT_RUNS_ROOT, f"finetune-{cfg.init}")
    if cfg.resume:
        return open_for_resume(
            cfg.out,
            cfg_dict,
            fingerprint,
            free_fields=RESUME_FREE_FIELDS,
            finished=("model.safetensors",) if cfg.final_model else ("metrics.json",),
            command="e.g. --out auto",
        )
    return ensure_new_dir(cfg.out)


def _start(cfg: FinetuneConfig) -> _Run:
    """Data, SSL encoders (checked before any work), run folder, config.json / provenance.json, images."""
    df, pos, neg = _load_data(cfg)
    encoders = ssl_encoders(cfg, df)
    fingerprint = data_fingerprint(df)
    cfg_dict = {**cfg.to_dict(), "positive_label": pos}
    out = _prepare_out(cfg, cfg_dict, fingerprint)
    (out / "figures").mkdir(exist_ok=True)
    cfg_dict["out"] = str(out)
    if not (out / "config.json").exists():
        write_json_atomic(out / "config.json", cfg_dict)
    plan = runtime.plan(
        cfg.device,
        cfg.precision,
        workload=runtime.Workload(
            f"finetune-{cfg.backbone}", cfg.image_size, cfg.batch_size, lambda: build_classifier(cfg.backbone)
        ),
    )
    if not (out / "provenance.json").exists():  # written once, when the data is read; a resume never rewrites it
        write_provenance(
            out,
            cfg_dict,
            fingerprint,
            extra={
                "runtime": plan.to_dict(),
                "positive_label": pos,
                "negative_label": neg,
                "n_images": int(len(df)),
                "n_positive": int(df["y"].sum()),
            },
        )
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    arr = load_images(list(df["path"]), cfg.image_size, stain=cfg.stain_normalize, **kw)  # normalised once, cached
    if cfg.stain_normalize:  # which images the method had to leave as they were (never dropped): stain.json
        write_stain_report(out, stain_report(arr), df)
    images = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))
    return _Run(cfg, df, (pos, neg), fingerprint, encoders, out, plan, images, df["y"].to_numpy().astype(int))


def _split(run: _Run, folds: np.ndarray, frac: float, seed: int, k: int) -> dict[str, Any]:
    """Test fold ``k``; training folds subsampled to ``frac`` of their labels; a slide-grouped validation split;
    the step budget (``min_steps=-1``: as many steps as this fold makes with all labels)."""
    cfg, df, split_seed = run.cfg, run.df, seed * 1000 + k
    test_idx = np.flatnonzero(folds == k)
    train_all = np.flatnonzero((folds >= 0) & (folds != k))  # fold -1: split=test rows, never in CV
    df_tr = df.iloc[train_all].reset_index(drop=True)
    train_pool = train_all[subsample_labels(df_tr, frac, split_seed)]
    vmask = np.asarray(
        inner_validation(df.iloc[train_pool].reset_index(drop=True), fraction=cfg.val_fraction, seed=split_seed),
        dtype=bool,
    )
    assert not set(df["slide"].iloc[test_idx]) & set(df["slide"].iloc[train_pool]), "slide leakage"
    budget = cfg.min_steps
    if budget < 0:
        vfull = np.asarray(inner_validation(df_tr, fraction=cfg.val_fraction, seed=split_seed), dtype=bool)
        budget = int(cfg.epochs) * max(1, math.ceil(int((~vfull).sum()) / cfg.batch_size))
    return {
        "test": test_idx,
        "train_all": train_all,
        "pool": train_pool,
        "train": train_pool[~vmask],
        "val": train_pool[vmask],
        "budget": budget,
    }


def _encoder_for(run: _Run, test_idx: np.ndarray) -> Path | None:
    """The fold's SSL encoder: per held-out centre (pretrained without it) or the run's one encoder."""
    if not run.cfg.per_centre_encoders:
        return run.encoders.get(None)
    (held_out,) = set(run.df["center"].iloc[test_idx].astype(str).str.strip())
    return run.encoders[held_out]


def _predictions(run: _Run, idx: np.ndarray, probs: np.ndarray, columns: tuple[str, ...], **extra: Any):
    sub = run.df.iloc[idx]
    return pd.DataFrame(
        {**{c: sub[c].to_numpy() for c in columns}, "prob": probs, "pred": (probs >= 0.5).astype(int), **extra}
    )


def _train_fold(run: _Run, folds: np.ndarray, frac: float, seed: int, k: int, fdir: Path):
    """Train and save one fold model -> (out-of-fold predictions, its per-fold metrics row)."""
    cfg, df = run.cfg, run.df
    sp = _split(run, folds, frac, seed, k)
    model, info = train_one(
        cfg,
        run.images,
        run.y,
        sp["train"],
        sp["val"] if len(sp["val"]) else None,
        seed=seed + 17 * k,
        plan=run.plan,
        encoder=_encoder_for(run, sp["test"]),
        state_path=fdir / "state.pt",
        min_steps=sp["budget"],
        desc=f"{cfg.init} {frac:.0%} s{seed} f{k}",
    )
    test_images = run.images[torch.from_numpy(sp["test"])]
    probs = predict_probs(model, test_images, plan=run.plan)
    pred = _predictions(
        run,
        sp["test"],
        probs.astype(float),
        ("path", "slide", "center", "label", "y"),
        fold=k,
        seed=seed,
        init=cfg.init,
        label_fraction=frac,
    )
    test_slides = sorted(set(pred["slide"]))
    row = {
        "label_fraction": frac,
        "seed": seed,
        "fold": k,
        **M.binary_metrics(pred["y"], pred["prob"]),
        **{
            key: info[key]
            for key in (
                "n_train",
                "n_train_pos",
                "n_val",
                "best_epoch",
                "epochs_run",
                "passes_per_epoch",
                "steps_per_epoch",
                "seconds",
            )
        },
        "test_slides": ";".join(test_slides),
        "checkpoint": fdir.name,
    }
    meta = model_meta(
        cfg,
        run.labels,
        run.fingerprint,
        label_fraction=frac,
        seed=seed,
        fold=k,
        test_slides=test_slides,
        epochs=info["best_epoch"],
        n_train=info["n_train"],
        cv_auc=f"{row['auc']:.3f} (this fold)",
    )
    model_file = save_fold_model(model, meta, fdir / "model.safetensors", test_images, probs, run.plan)
    write_csv_atomic(pred, fdir / "predictions.csv")
    write_json_atomic(fdir / "history.json", info["history"])
    write_json_atomic(
        fdir / "result.json",
        {
            "row": row,
            "init_info": info["init_info"],
            "train_slides": sorted(set(df["slide"].iloc[sp["train"]])),
            "val_slides": sorted(set(df["slide"].iloc[sp["val"]])),
            "test_slides": test_slides,
            "model": model_file,
            "n_train_pool": int(len(sp["train_all"])),
            "n_train_used": int(len(sp["pool"])),
        },
    )
    (fdir / "state.pt").unlink(missing_ok=True)  # the fold is finished; its training state is not needed
    return pred, row


def _cross_validate(run: _Run) -> tuple[dict[int, np.ndarray], list, list, list]:
    """Every (label fraction, seed, fold); finished folds (result.json) are read back, not retrained.
    -> (folds per seed, fold tables, prediction frames, per-fold rows)."""
    cfg = run.cfg
    folds_by_seed: dict[int, np.ndarray] = {}
    fold_rows, pred_frames, per_fold = [], [], []
    jobs = [(f, s, k) for f in cfg.label_fractions for s in cfg.seeds for k in range(cfg.folds)]
    outer = tqdm(jobs, desc=f"{cfg.init} folds", disable=not cfg.progress)
    t_jobs, n_trained = time.time(), 0
    for j, (frac, seed, k) in enumerate(outer):
        if seed not in folds_by_seed:
            by = "slide" if cfg.cv == "slide" else "center"
            folds_by_seed[seed] = np.asarray(assign_folds(run.df, n_folds=cfg.folds, seed=seed, by=by))
            fold_rows.append(fold_table(run.df, folds_by_seed[seed]))
            fold_rows[-1].insert(0, "seed", seed)
        fdir = run.out / "checkpoints" / fold_dir_name(frac, seed, k)
        if (fdir / "result.json").exists() and (fdir / "predictions.csv").exists():
            pred_frames.append(pd.read_csv(fdir / "predictions.csv", keep_default_na=False))
            per_fold.append(json.loads((fdir / "result.json").read_text())["row"])
            continue
        pred, row = _train_fold(run, folds_by_seed[seed], frac, seed, k, fdir)
        pred_frames.append(pred)
        per_fold.append(row)
        outer.set_postfix(auc=f"{row['auc']:.3f}")
        n_trained += 1
        live.report(
            f"fine-tune {cfg.init}: fold {j + 1}/{len(jobs)} done (AUC {row['auc']:.3f}), "
            + live.time_left(n_trained, n_trained + len(jobs) - j - 1, time.time() - t_jobs)
        )
    return folds_by_seed, fold_rows, pred_frames, per_fold


def _metrics(run: _Run, per_fold: list[dict[str, Any]], predictions: pd.DataFrame) -> dict[str, Any]:
    """metrics.json: per fold + mean ± std of the largest label fraction, ``by_fraction`` for every fraction."""
    cfg = run.cfg
    by_fraction: dict[str, Any] = {}
    for frac in cfg.label_fractions:
        rows_f = [r for r in per_fold if float(r["label_fraction"]) == frac]
        pf = predictions[predictions["label_fraction"].astype(float) == frac]
        pooled = pf.groupby("path", sort=False).agg(y=("y", "first"), prob=("prob", "mean"))
        by_fraction[f"{frac:g}"] = {
            "label_fraction": frac,
            "summary": M.summarise(pd.DataFrame(rows_f)),
            "per_fold": rows_f,
            "pooled_oof": M.binary_metrics(pooled["y"], pooled["prob"]),
        }
    main_frac = max(cfg.label_fractions)
    main = by_fraction[f"{main_frac:g}"]
    doc = {
        "init": cfg.init,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "label_fraction": main_frac,
        "label_fractions": cfg.label_fractions,
        "min_steps": cfg.min_steps,
        "positive_label": run.labels[0],
        "negative_label": run.labels[1],
        "seeds": cfg.seeds,
        "folds": cfg.folds,
        "summary": main["summary"],
        "per_fold": main["per_fold"],
        "pooled_oof": main["pooled_oof"],
        "by_fraction": by_fraction,
        "std_note": "mean ± sample std (ddof=1) over all (seed, fold) test folds; summary, per_fold and pooled_oof "
        "are for the largest label fraction, by_fraction holds every fraction",
    }
    write_json_atomic(run.out / "metrics.json", doc)
    return doc


def _final_model(run: _Run, folds: np.ndarray, doc: dict[str, Any], predictions: pd.DataFrame) -> Path:
    """Train on every CV image (the largest fraction) for the folds' median selected epochs; save it with the
    Youden threshold of the pooled out-of-fold predictions; predict the split=test rows once."""
    cfg, path = run.cfg, run.out / "model.safetensors"
    if path.exists():
        return path
    main_frac, seed, state = doc["label_fraction"], cfg.seeds[0], run.out / "checkpoints" / "final" / "state.pt"
    pool = np.flatnonzero(folds >= 0)  # every CV image; split=test rows stay out
    idx_all = pool[subsample_labels(run.df.iloc[pool], main_frac, seed)]
    n_ep = int(max(1, np.median([r["best_epoch"] for r in doc["per_fold"]] or [cfg.epochs])))
    budget = cfg.min_steps if cfg.min_steps >= 0 else n_ep * max(1, math.ceil(len(pool) / cfg.batch_size))
    model, _ = train_one(
        cfg,
        run.images,
        run.y,
        idx_all,
        None,
        seed=seed,
        plan=run.plan,
        encoder=run.encoders.get(None),
        state_path=state,
        max_epochs=n_ep,
        min_steps=budget,
        desc=f"{cfg.init} final",
    )
    oof = predictions[predictions["label_fraction"].astype(float) == main_frac]
    save_final_model(
        model,
        model_meta(
            cfg,
            run.labels,
            run.fingerprint,
            label_fraction=main_frac,
            epochs=n_ep,
            n_train=int(len(idx_all)),
            cv_auc=doc["summary"].get("auc", {}).get("text"),
            threshold=M.threshold_from_oof(oof, "youden"),
            threshold_rule="youden (pooled out-of-fold predictions)",
        ),
        path,
    )
    held = np.flatnonzero(folds < 0)
    if len(held):  # rows with split=test: never in CV, predicted once by the final model
        hp = predict_probs(model, run.images[torch.from_numpy(held)], plan=run.plan)
        hdf = _predictions(run, held, hp, ("path", "slide", "label", "y"), init=cfg.init)
        write_csv_atomic(hdf, run.out / "heldout_predictions.csv")
        write_json_atomic(run.out / "heldout_metrics.json", M.binary_metrics(hdf["y"], hdf["prob"]))
    state.unlink(missing_ok=True)
    return path


def resume_hint(run_dir: str | Path) -> str:
    return f"glomlib finetune --out {run_dir} --resume true (with the same data and parameters)"


def run_finetune(cfg: FinetuneConfig | None = None, **params: Any) -> FinetuneResult:
    """Cross-validated fine-tuning for ``cfg.init`` (see the package docstring). ``cfg``: a validated config
    (``from_params`` / ``from_namespace`` / the CLI); without it one is built from ``params``. The run folder's
    ``run.json`` says running / finished / failed (with how to resume or start again)."""
    cfg = cfg if cfg is not None else FinetuneConfig.from_params(**params)
    with run_status("finetune", resume_hint):
        run = _start(cfg)
        folds_by_seed, fold_rows, pred_frames, per_fold = _cross_validate(run)
        predictions = pd.concat(pred_frames, ignore_index=True)
        folds_df = pd.concat(fold_rows, ignore_index=True)
        write_csv_atomic(predictions, run.out / "predictions.csv")
        write_csv_atomic(folds_df, run.out / "folds.csv")
        doc = _metrics(run, per_fold, predictions)
        model_path = _final_model(run, folds_by_seed[cfg.seeds[0]], doc, predictions) if cfg.final_model else None
    return FinetuneResult(
        out=run.out,
        predictions=predictions,
        per_fold=pd.DataFrame(per_fold),
        summary=doc["summary"],
        folds=folds_df,
        model_path=model_path,
        summaries={f: v["summary"] for f, v in doc["by_fraction"].items()},
    )
