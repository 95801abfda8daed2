"""The fine-tune step: data and run folder once, every (label fraction, seed, fold) model, metrics, final model.
The config arrives validated and is never changed; per-run values (the resolved positive label, the SSL encoder
files) are derived once in :class:`_Run` and passed down."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from glomlib.core import io, runtime
from glomlib.core import progress as live
from glomlib.core.config import ConfigError, budget_name
from glomlib.core.coverage import fold_coverage
from glomlib.core.paths import DEFAULT_MANIFEST, DEFAULT_RUNS_ROOT
from glomlib.core.runs import FINALS_DIR
from glomlib.data import splits
from glomlib.data.cache import load_images, stain_report
from glomlib.data.manifest import data_fingerprint, read_manifest
from glomlib.data.stain import write_stain_report
from glomlib.evaluate import metrics as M
from glomlib.models.heads import build_classifier
from glomlib.models.inference import predict_probs
from glomlib.models.integrity import pixel_stats
from glomlib.train.finetune.config import FINAL_SEED_STEP, RESUME_FREE_FIELDS, FinetuneConfig
from glomlib.train.finetune.encoder import ssl_encoders
from glomlib.train.finetune.save import (
    model_meta,
    save_final_model,
    save_fold_model,
    save_run_bundle,
    zero_nonfinite_weights,
)
from glomlib.train.finetune.train import subsample_labels, train_one
from glomlib.train.resume import finished_outputs

MIN_VALIDATION = 10  # fewer validation images than this (or one class): a warning


class SmallValidationWarning(UserWarning):
    """A fold's validation split is too small (or holds one class) for reliable epoch selection."""


ROW_INFO = "n_train n_train_pos n_val best_epoch epochs_run passes_per_epoch steps_per_epoch seconds".split()


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


FOLD_RUNTIME = ("device", "precision", "cpu", "gpu", "threads")  # in each fold's result.json (a run may span resumes)


def fold_dir_name(label_fraction: float, seed: int, fold: int) -> str:
    """``checkpoints/`` folder of one fold: ``seed0-fold3`` for all labels, ``frac0.1-seed0-fold3`` for a fraction,
    ``4perclass-seed0-fold3`` for 4 labels per class (budget ``-4``)."""
    frac = float(label_fraction)
    if frac < 0:
        return f"{int(-frac)}perclass-seed{seed}-fold{fold}"
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
        return io.new_run_dir(DEFAULT_RUNS_ROOT, f"finetune-{cfg.init}")
    if not cfg.resume:
        return io.ensure_new_dir(cfg.out)
    done = finished_outputs(cfg.out, ("model.safetensors",) if cfg.final_model else ("metrics.json",))
    kw = {"free_fields": RESUME_FREE_FIELDS, "finished": done, "command": "e.g. --out auto"}
    return io.open_for_resume(cfg.out, cfg_dict, fingerprint, **kw)


def _start(cfg: FinetuneConfig) -> _Run:
    """Data, SSL encoders (checked before any work), run folder, config.json / provenance.json, images."""
    df, pos, neg = _load_data(cfg)
    encoders, fingerprint = ssl_encoders(cfg, df), data_fingerprint(df)
    cfg_dict = {**cfg.to_dict(), "positive_label": pos, "stain_normalize": cfg.stain_method}  # as resolved
    out = _prepare_out(cfg, cfg_dict, fingerprint)
    (out / "figures").mkdir(exist_ok=True)
    cfg_dict["out"] = str(out)
    if not (out / "config.json").exists():
        io.write_json_atomic(out / "config.json", cfg_dict)
    work = runtime.Workload(
        f"finetune-{cfg.backbone}", cfg.image_size, cfg.batch_size, lambda: build_classifier(cfg.backbone)
    )
    plan = runtime.plan(cfg.device, cfg.precision, workload=work)
    _same_precision_as_before(out, plan)
    if not (out / "provenance.json").exists():  # written once, when the data is read; a resume never rewrites it
        extra = {"runtime": plan.to_dict(), "positive_label": pos, "negative_label": neg, "n_images": int(len(df))}
        io.write_provenance(out, cfg_dict, fingerprint, extra={**extra, "n_positive": int(df["y"].sum())})
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    arr = load_images(list(df["path"]), cfg.image_size, stain=cfg.stain_method, **kw)  # normalised once, cached
    if cfg.stain_method:  # which images the method had to leave as they were (never dropped): stain.json
        write_stain_report(out, stain_report(arr), df)
    images = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))
    return _Run(cfg, df, (pos, neg), fingerprint, encoders, out, plan, images, df["y"].to_numpy().astype(int))


def _same_precision_as_before(out: Path, plan: runtime.Plan) -> None:
    """A resumed run trains its remaining folds in the precision its first folds used (one table, one precision):
    ``auto`` on another machine may choose otherwise, and then the resume is refused, naming the setting to pass."""
    prov = out / "provenance.json"
    first = json.loads(prov.read_text()).get("runtime", {}).get("precision") if prov.exists() else None
    if first and first != plan.precision:
        raise io.ResumeError(
            f"cannot resume {out}: its folds so far were trained in {first}, and this machine would train the rest "
            f"in {plan.precision} ({plan.reason}). Resume with precision={first} to keep the table in one precision, "
            "or start a new run."
        )


def _split(run: _Run, folds: np.ndarray, frac: float, seed: int, k: int) -> dict[str, Any]:
    """Test fold ``k``; training folds subsampled to the label budget ``frac`` (nested, seeded by seed and fold
    only); a slide-grouped validation split, none where it would leave the training side one class (tiny budgets:
    the model trains the fixed schedule on every label); the step budget (``min_steps=-1``: as many steps as this fold
    makes with all labels)."""
    cfg, df, split_seed = run.cfg, run.df, seed * 1000 + k
    test = np.flatnonzero(folds == k)
    train_all = np.flatnonzero((folds >= 0) & (folds != k))  # fold -1: split=test rows, never in CV
    df_tr = df.iloc[train_all].reset_index(drop=True)
    pool = train_all[subsample_labels(df_tr, frac, split_seed)]
    df_pool = df.iloc[pool].reset_index(drop=True)
    try:
        vmask = np.asarray(splits.inner_validation(df_pool, fraction=cfg.val_fraction, seed=split_seed), dtype=bool)
    except ValueError:  # too few slides or images among the labels for a stratified grouped split
        vmask = np.zeros(len(pool), dtype=bool)
    if len(set(run.y[pool[~vmask]])) < 2:
        vmask[:] = False
    assert not set(df["slide"].iloc[test]) & set(df["slide"].iloc[pool]), "slide leakage"
    budget = cfg.min_steps
    if budget < 0:
        vfull = np.asarray(splits.inner_validation(df_tr, fraction=cfg.val_fraction, seed=split_seed), dtype=bool)
        budget = int(cfg.epochs) * max(1, math.ceil(int((~vfull).sum()) / cfg.batch_size))
    return dict(test=test, train_all=train_all, pool=pool, train=pool[~vmask], val=pool[vmask], budget=budget)


def _warn_small_validation(y_val: np.ndarray, fold: str) -> None:
    """Epoch selection and early stopping on a handful of images (or one class) are mostly noise: say so."""
    n, classes = len(y_val), len(set(y_val.tolist()))
    if 0 < n < MIN_VALIDATION or (n and classes < 2):
        warnings.warn(
            f"{fold}: the validation split holds {n} image(s) of {classes} class(es); epoch selection and early "
            f"stopping are unreliable below {MIN_VALIDATION} images of both classes. Use more slides, fewer folds "
            "or a larger val_fraction.",
            SmallValidationWarning,
            stacklevel=2,
        )


def _encoder_for(run: _Run, test_idx: np.ndarray) -> Path | None:
    """The fold's SSL encoder: per held-out centre (pretrained without it) or the run's one encoder."""
    if not run.cfg.per_centre_encoders:
        return run.encoders.get(None)
    (held_out,) = set(run.df["center"].iloc[test_idx].astype(str).str.strip())
    return run.encoders[held_out]


def _predictions(run: _Run, idx: np.ndarray, probs: np.ndarray, columns: str, **extra: Any) -> pd.DataFrame:
    sub = run.df.iloc[idx]
    cols = {c: sub[c].to_numpy() for c in columns.split()}
    return pd.DataFrame({**cols, "prob": probs, "pred": (probs >= 0.5).astype(int), **extra})


def _train_fold(run: _Run, folds: np.ndarray, frac: float, seed: int, k: int, fdir: Path):
    """Train and save one fold model -> (out-of-fold predictions, its per-fold metrics row)."""
    cfg, sp = run.cfg, _split(run, folds, frac, seed, k)
    _warn_small_validation(run.y[sp["val"]], fdir.name)
    kw = dict(seed=seed + 17 * k, plan=run.plan, encoder=_encoder_for(run, sp["test"]), state_path=fdir / "state.pt")
    val, desc = (sp["val"] if len(sp["val"]) else None), f"{cfg.init} {budget_name(frac)} s{seed} f{k}"
    model, info = train_one(cfg, run.images, run.y, sp["train"], val, min_steps=sp["budget"], desc=desc, **kw)
    test_images = run.images[torch.from_numpy(sp["test"])]
    probs = predict_probs(model, test_images, plan=run.plan)
    cols = "path slide center label y"
    pred = _predictions(
        run, sp["test"], probs.astype(float), cols, fold=k, seed=seed, init=cfg.init, label_fraction=frac
    ).assign(budget=budget_name(frac), n_labels=len(sp["pool"]), n_labels_pos=int(run.y[sp["pool"]].sum()))
    test_slides = sorted(set(pred["slide"]))
    row = {"label_fraction": frac, "seed": seed, "fold": k, **M.binary_metrics(pred["y"], pred["prob"])}
    row.update({key: info[key] for key in ROW_INFO}, test_slides=";".join(test_slides), checkpoint=fdir.name)
    meta = model_meta(cfg, run.labels, run.fingerprint, label_fraction=frac, seed=seed, fold=k, test_slides=test_slides)
    meta.update(epochs=info["best_epoch"], n_train=info["n_train"], cv_auc=f"{row['auc']:.3f} (this fold)")
    meta.update(pixel_stats=pixel_stats(run.images[torch.from_numpy(sp["train"])].numpy()))
    model_file = save_fold_model(model, meta, fdir / "model.safetensors", test_images, probs, run.plan)
    io.write_csv_atomic(pred, fdir / "predictions.csv")
    io.write_json_atomic(fdir / "history.json", info["history"])
    slides = {f"{s}_slides": sorted(set(run.df["slide"].iloc[sp[s]])) for s in ("train", "val")}
    result = {"row": row, "init_info": info["init_info"], **slides, "test_slides": test_slides, "model": model_file}
    result["runtime"] = {k: v for k, v in run.plan.to_dict().items() if k in FOLD_RUNTIME}  # where this fold trained
    n = {"n_train_pool": int(len(sp["train_all"])), "n_train_used": int(len(sp["pool"]))}
    io.write_json_atomic(fdir / "result.json", {**result, **n})
    (fdir / "state.pt").unlink(missing_ok=True)  # the fold is finished; its training state is not needed
    return pred, row


def _cross_validate(run: _Run) -> tuple[dict[int, np.ndarray], list, list, list]:
    """Every (label fraction, seed, fold); finished folds (result.json) are read back, not retrained.
    -> (folds per seed, fold tables, prediction frames, per-fold rows)."""
    cfg, folds_by_seed, fold_rows, preds, per_fold = run.cfg, {}, [], [], []
    jobs = [(f, s, k) for f in cfg.fractions for s in cfg.seeds for k in range(cfg.folds)]
    outer = tqdm(jobs, desc=f"{cfg.init} folds", disable=not cfg.progress)
    t_jobs, n_trained = time.time(), 0
    for j, (frac, seed, k) in enumerate(outer):
        if seed not in folds_by_seed:
            by = "slide" if cfg.cv == "slide" else "center"
            folds_by_seed[seed] = np.asarray(splits.assign_folds(run.df, n_folds=cfg.folds, seed=seed, by=by))
            fold_rows.append(splits.fold_table(run.df, folds_by_seed[seed]))
            fold_rows[-1].insert(0, "seed", seed)
        fdir = run.out / "checkpoints" / fold_dir_name(frac, seed, k)
        if (fdir / "result.json").exists() and (fdir / "predictions.csv").exists():
            preds.append(pd.read_csv(fdir / "predictions.csv", keep_default_na=False))
            per_fold.append(json.loads((fdir / "result.json").read_text())["row"])
            continue
        pred, row = _train_fold(run, folds_by_seed[seed], frac, seed, k, fdir)
        preds.append(pred)
        per_fold.append(row)
        outer.set_postfix(auc=f"{row['auc']:.3f}")
        n_trained += 1
        left = live.time_left(n_trained, n_trained + len(jobs) - j - 1, time.time() - t_jobs)
        live.report(f"fine-tune {cfg.init}: fold {j + 1}/{len(jobs)} done (AUC {row['auc']:.3f}), " + left)
    return folds_by_seed, fold_rows, preds, per_fold


def _metrics(run: _Run, per_fold: list[dict[str, Any]], predictions: pd.DataFrame) -> dict[str, Any]:
    """metrics.json: per fold + mean ± std of the largest label fraction, ``by_fraction`` for every fraction."""
    cfg, by_fraction = run.cfg, {}
    for frac in cfg.fractions:
        rows = [r for r in per_fold if float(r["label_fraction"]) == frac]
        pf = predictions[predictions["label_fraction"].astype(float) == frac]
        pooled = pf.groupby("path", sort=False).agg(y=("y", "first"), prob=("prob", "mean"))
        summary, pooled = M.summarise(pd.DataFrame(rows)), M.binary_metrics(pooled["y"], pooled["prob"])
        by_fraction[f"{frac:g}"] = {"label_fraction": frac, "summary": summary, "per_fold": rows, "pooled_oof": pooled}
    main_frac = max(cfg.fractions)
    main = by_fraction[f"{main_frac:g}"]
    doc = {k: getattr(cfg, k) for k in ("init", "backbone", "image_size")}
    doc.update(label_fraction=main_frac, label_fractions=cfg.fractions, min_steps=cfg.min_steps)
    doc.update(positive_label=run.labels[0], negative_label=run.labels[1], seeds=cfg.seeds, folds=cfg.folds)
    doc.update({k: main[k] for k in ("summary", "per_fold", "pooled_oof")}, by_fraction=by_fraction)
    doc["std_note"] = (
        "mean ± sample std (ddof=1) over all (seed, fold) test folds; summary, per_fold and pooled_oof "
        "are for the largest label fraction, by_fraction holds every fraction"
    )
    io.write_json_atomic(run.out / "metrics.json", doc)
    return doc


def final_seeds(cfg: FinetuneConfig) -> list[int]:
    """The seeds of the final models: ``seeds[0]``, then ``seeds[0] + 1000 * i`` for the ``final_seeds - 1`` others."""
    return [cfg.seeds[0] + FINAL_SEED_STEP * i for i in range(cfg.final_seeds)]


def _final_model(
    run: _Run, folds: np.ndarray, doc: dict[str, Any], predictions: pd.DataFrame, seed: int | None = None
) -> Path:
    """Train on every CV image (the largest fraction) for the folds' median selected epochs; save it with the
    Youden threshold of the pooled out-of-fold predictions; predict the split=test rows once. ``seed``: one of the
    other final models (``finals/final-seed<seed>.safetensors``, bundle members only); None: model.safetensors."""
    cfg, frac, first = run.cfg, doc["label_fraction"], seed is None
    seed = cfg.seeds[0] if first else seed
    path = run.out / "model.safetensors" if first else run.out / FINALS_DIR / f"final-seed{seed}.safetensors"
    state = run.out / "checkpoints" / ("final" if first else f"final-seed{seed}") / "state.pt"
    if path.exists():  # written last: the final model is complete (an interrupt came before run.json said so)
        state.unlink(missing_ok=True)
        return path
    pool = np.flatnonzero(folds >= 0)  # every CV image; split=test rows stay out
    idx_all = pool[subsample_labels(run.df.iloc[pool], frac, seed)]
    n_ep = int(max(1, np.median([r["best_epoch"] for r in doc["per_fold"]] or [cfg.epochs])))
    budget = cfg.min_steps if cfg.min_steps >= 0 else n_ep * max(1, math.ceil(len(pool) / cfg.batch_size))
    kw = dict(seed=seed, plan=run.plan, encoder=run.encoders.get(None), state_path=state, max_epochs=n_ep)
    desc = f"{cfg.init} final" + ("" if first else f" s{seed}")
    model, _ = train_one(cfg, run.images, run.y, idx_all, None, min_steps=budget, desc=desc, **kw)
    oof = predictions[predictions["label_fraction"].astype(float) == frac]
    meta = model_meta(cfg, run.labels, run.fingerprint, label_fraction=frac, epochs=n_ep, n_train=int(len(idx_all)))
    meta["seed"] = int(seed)
    meta.update(cv_auc=doc["summary"].get("auc", {}).get("text"), threshold=M.threshold_from_oof(oof, "youden"))
    meta.update(pixel_stats=pixel_stats(run.images[torch.from_numpy(idx_all)].numpy()))
    held = np.flatnonzero(folds < 0)
    zero_nonfinite_weights(model)  # as saved (see save_final_model)
    if len(held) and first:  # rows with split=test: never in CV, predicted once by the final model
        hp = predict_probs(model, run.images[torch.from_numpy(held)], plan=run.plan)
        hdf = _predictions(run, held, hp, "path slide label y", init=cfg.init)
        io.write_csv_atomic(hdf, run.out / "heldout_predictions.csv")
        io.write_json_atomic(run.out / "heldout_metrics.json", M.binary_metrics(hdf["y"], hdf["prob"]))
    path.parent.mkdir(exist_ok=True)
    save_final_model(model, {**meta, "threshold_rule": "youden (pooled out-of-fold predictions)"}, path)  # last
    state.unlink(missing_ok=True)
    return path


def resume_hint(run_dir: str | Path) -> str:
    return f"glomlib finetune --out {run_dir} --resume true (with the same data and parameters)"


def run_finetune(cfg: FinetuneConfig | None = None, **params: Any) -> FinetuneResult:
    """Cross-validated fine-tuning for ``cfg.init`` (see the package docstring). ``cfg``: a validated config
    (``from_params`` / ``from_namespace`` / the CLI); without it one is built from ``params``. The run folder's
    ``run.json`` says running / finished / failed (with how to resume or start again)."""
    cfg = cfg if cfg is not None else FinetuneConfig.from_params(**params)
    with io.run_status("finetune", resume_hint):
        run = _start(cfg)
        folds_by_seed, fold_rows, preds, per_fold = _cross_validate(run)
        predictions, folds_df = pd.concat(preds, ignore_index=True), pd.concat(fold_rows, ignore_index=True)
        io.write_csv_atomic(predictions, run.out / "predictions.csv")
        io.write_csv_atomic(folds_df, run.out / "folds.csv")
        fold_coverage(predictions, folds_df)  # never a metric over part of a fold (issue 19)
        doc = _metrics(run, per_fold, predictions)
        model_path = None
        if cfg.final_model:  # the other final models first: model.safetensors, written last, marks the run done
            folds0 = folds_by_seed[cfg.seeds[0]]
            others = [_final_model(run, folds0, doc, predictions, s) for s in final_seeds(cfg)[1:]]
            model_path = _final_model(run, folds0, doc, predictions)
            save_run_bundle(run.out, [model_path, *others], doc["label_fraction"], cfg.bundle_members)
    summaries = {f: v["summary"] for f, v in doc["by_fraction"].items()}
    return FinetuneResult(run.out, predictions, pd.DataFrame(per_fold), doc["summary"], folds_df, model_path, summaries)
