"""Fine-tune a classifier from one initialisation and evaluate it with slide-grouped cross-validation.

Initialisations (``init``):

* ``glom`` — the SSL encoder from notebook 02 (``ssl_checkpoint``: a file, an SSL run folder, or ``latest`` =
  the newest ``runs/**/encoder.safetensors``); its backbone must match ``backbone``.
* ``imagenet`` — ImageNet weights, offline (see :mod:`glomlib.models.backbones`).
* ``scratch`` — random weights.

Protocol (identical for every init, so the comparison is fair):

1. Folds: ``glomlib.data.splits.assign_folds`` — slide-grouped (patient-grouped when patients differ), stratified,
   ``folds`` folds, repeated for each seed in ``seeds``. ``folds.csv`` records which slide is in which fold.
2. For each (seed, fold): the training folds are optionally subsampled to ``label_fraction`` of their images
   (stratified by label, by seed; the test fold is never touched); a validation split (``val_fraction``,
   grouped by slide) is carved from the remaining training images; the model (backbone + dropout + linear head)
   is trained with AdamW + cosine schedule, class-weighted BCE (``pos_weight = n_neg / n_pos``), light
   augmentation (flips, 90° rotations, colour jitter); after every epoch the validation loss is measured; the
   best epoch's weights are kept and training stops after ``patience`` epochs without improvement.
   The test fold is predicted once, with the selected weights.
3. Every (seed, fold) is checkpointed after each epoch (atomic writes) and its result saved when done; with
   ``resume=True`` finished folds are read back, an interrupted fold continues from its last epoch.
4. A final model is trained on all labelled images (same fraction) for the median of the folds' selected
   epoch counts and saved as a self-describing ``model.safetensors`` (see :mod:`glomlib.evaluate.predict`).

Outputs in ``out``: config.json, provenance.json, folds.csv, predictions.csv (out-of-fold, every image and seed),
metrics.json (per fold + mean ± std), model.safetensors, checkpoints/ (per-fold state and results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from glomlib.core import runtime
from glomlib.core.config import ConfigError, StepConfig
from glomlib.core.io import ensure_new_dir, new_run_dir, write_csv_atomic, write_json_atomic, write_provenance, write_with
from glomlib.core.runtime import PRECISIONS
from glomlib.data.cache import load_images
from glomlib.data.manifest import data_fingerprint, read_manifest
from glomlib.data.splits import assign_folds, fold_table, inner_validation
from glomlib.evaluate import metrics as M
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from glomlib.models.files import load_encoder_into, save_model
from glomlib.models.heads import build_classifier
from glomlib.models.inference import predict_probs

INITS = ("glom", "imagenet", "scratch")
MODEL_FORMAT = "glomlib.train.finetune.model/1"
# Config fields that may change between an interrupted run and its resumption.
_RESUME_FREE_FIELDS = {"resume", "device", "num_workers", "out", "progress", "final_model", "cache_dir"}


@dataclasses.dataclass
class FinetuneConfig(StepConfig):
    """Parameters of notebook 03 (``notebooks/03_finetune.ipynb``) and of ``glomlib finetune``."""

    init: str = "glom"                      # glom | imagenet | scratch
    ssl_checkpoint: str = "latest"          # glom only: encoder.safetensors, an SSL run folder, or "latest"
    imagenet_weights: str = ""              # imagenet only: local weights file ("" = the offline default)
    data: str = "data/glomeruli-pas/manifest.csv"  # manifest CSV
    out: str = "auto"                       # run folder; "auto" = runs/<stamp>-finetune-<init>
    backbone: str = "efficientnet_lite0"    # resnet18 | resnet50 | efficientnet_lite0
    image_size: int = 96                    # pixels (square) fed to the network
    epochs: int = 15                        # maximum epochs per fold
    batch_size: int = 32                    # images per step
    lr: float = 1e-3                        # AdamW learning rate (cosine decay, 1 warm-up epoch)
    weight_decay: float = 1e-4              # AdamW weight decay
    folds: int = 5                          # slide-grouped cross-validation folds
    seeds: list = dataclasses.field(default_factory=lambda: [0])  # one CV repetition per seed
    label_fraction: float = 1.0             # fraction of the training images used (stratified; test folds untouched)
    positive_label: str = "M1"              # label of the positive class; the other label is negative
    device: str = "auto"                    # auto | cpu | cuda | cuda:N | mps
    patience: int = 4                       # early stopping: epochs without validation improvement
    val_fraction: float = 0.2               # share of the training slides held out for model selection
    augment: bool = True                    # flips, 90-degree rotations, colour jitter during training
    num_workers: int = 0                    # accepted for profiles; unused: images live in memory, batches are augmented in place
    resume: bool = False                    # continue an interrupted run in `out` (finished folds are kept)
    final_model: bool = True                # also train on all labelled images and save model.safetensors
    precision: str = "auto"                 # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32
    cache_dir: str = ""                     # image cache folder ("" = glomlib.data.cache default)
    progress: bool = True                   # tqdm progress bars

    def validate(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init={self.init!r}: choose one of {list(INITS)}.")
        if isinstance(self.seeds, (int, np.integer)):
            self.seeds = [int(self.seeds)]
        if isinstance(self.seeds, str):  # "0,1" or "[0, 1]" from the shell / papermill -p
            self.seeds = [int(s) for s in self.seeds.strip("[]() ").replace(" ", "").split(",") if s]
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise ConfigError("seeds must list at least one integer seed, e.g. [0].")
        if not (0 < float(self.label_fraction) <= 1):
            raise ConfigError(f"label_fraction={self.label_fraction}: must be in (0, 1].")
        if not (0 < float(self.val_fraction) < 1):
            raise ConfigError(f"val_fraction={self.val_fraction}: must be in (0, 1).")
        if int(self.folds) < 2:
            raise ConfigError(f"folds={self.folds}: need at least 2 folds for cross-validation.")
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be a positive integer.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}.")


# ------------------------------------------------------------------------------------------------ devices
# --------------------------------------------------------------------------------------------- the model
def find_latest_encoder(root: str | Path = "runs") -> Path:
    """Newest ``encoder.safetensors`` under ``root`` (by modification time)."""
    root = Path(root)
    found = sorted(root.glob("**/encoder.safetensors"), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if not found:
        raise FileNotFoundError(
            f"init='glom' with ssl_checkpoint='latest' but no encoder.safetensors exists under {root.resolve()}. "
            "Run notebook 02 (SimCLR pretraining) first, or pass ssl_checkpoint=<path to encoder.safetensors>."
        )
    return found[-1]


def resolve_ssl_checkpoint(spec: str) -> Path:
    if spec in ("latest", "", None):
        return find_latest_encoder("runs")
    p = Path(spec)
    if p.is_dir():
        p = p / "encoder.safetensors"
    if not p.is_file():
        raise FileNotFoundError(
            f"ssl_checkpoint={spec!r}: {p} does not exist. Give the encoder.safetensors written by notebook 02 "
            "(or its run folder), or 'latest'."
        )
    return p


def build_initial_backbone(cfg: FinetuneConfig):
    """The backbone for ``cfg.init`` -> (module, feature_dim, info dict)."""

    info: dict[str, Any] = {"init": cfg.init}
    if cfg.init == "glom":
        path = resolve_ssl_checkpoint(cfg.ssl_checkpoint)
        backbone, dim = build_backbone(cfg.backbone, init="scratch")
        meta = load_encoder_into(backbone, path, expect_backbone=cfg.backbone)
        info["ssl_checkpoint"] = str(Path(path).resolve())
        if isinstance(meta, dict):
            info["ssl_meta"] = {k: meta[k] for k in list(meta)[:20]}
            size = meta.get("image_size")
            if size not in (None, "") and int(size) != int(cfg.image_size):
                import warnings

                warnings.warn(f"The SSL encoder was pretrained at {size} px but image_size={cfg.image_size}; "
                              "fine-tuning at a different size than pretraining usually costs accuracy.")
        return backbone, dim, info
    backbone, dim = build_backbone(cfg.backbone, init=cfg.init,
                                   weights_path=(cfg.imagenet_weights or None) if cfg.init == "imagenet" else None)
    return backbone, dim, info


# ------------------------------------------------------------------------------------------ augmentation
def augment_batch(x, generator=None):
    """Light augmentation on a float NCHW batch in [0, 1]: flips, 90° rotations, brightness/contrast/saturation."""

    n = x.shape[0]
    g = generator
    flip_h = torch.rand(n, generator=g) < 0.5
    flip_v = torch.rand(n, generator=g) < 0.5
    rot = torch.randint(0, 4, (n,), generator=g)
    x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(3), x)
    x = torch.where(flip_v.view(-1, 1, 1, 1), x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        out = x.clone()
        for k in (1, 2, 3):
            sel = rot == k
            if sel.any():
                out[sel] = torch.rot90(x[sel], k, dims=(2, 3))
        x = out
    b = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3   # brightness ±15%
    c = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3   # contrast ±15%
    s = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3   # saturation ±15%
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * s + grey
    return x.clamp_(0, 1)


# ---------------------------------------------------------------------------------------- checkpointing
# ------------------------------------------------------------------------------------------- training
def train_one(cfg: FinetuneConfig, images, y_train: np.ndarray, idx_train: np.ndarray, idx_val: np.ndarray | None,
              *, seed: int, plan: runtime.Plan, state_path: Path | None = None, max_epochs: int | None = None,
              desc: str = "train") -> tuple[Any, dict[str, Any]]:
    """Train one model from ``cfg.init`` on ``images[idx_train]``; select the epoch on ``images[idx_val]``.

    ``y_train`` holds labels for every image (indexed like ``images``). Without ``idx_val`` the model trains for
    ``max_epochs`` epochs and the last weights are kept. ``state_path``: per-epoch checkpoint for resuming.
    Returns (model with the selected weights, info dict: best_epoch, epochs_run, history, seconds).
    """


    t0 = time.time()
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    backbone, dim, init_info = build_initial_backbone(cfg)
    model = build_classifier(cfg.backbone, dim, backbone)
    device = plan.device
    model = model.to(device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    epochs = int(max_epochs or cfg.epochs)
    ytr = y_train[idx_train]
    n_pos = int((ytr == 1).sum())
    n_neg = int((ytr == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{desc}: the training images hold only one class ({n_pos} positive, {n_neg} negative); "
                         "use a larger label_fraction or fewer folds.")
    pos_weight = torch.tensor(n_neg / n_pos, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(idx_train) / cfg.batch_size))
    total = epochs * steps_per_epoch
    warm = min(steps_per_epoch, max(1, total // 10))

    sched = runtime.warmup_cosine(opt, total, warm)
    gen = torch.Generator().manual_seed(seed)
    state = {"epoch": 0, "best_epoch": 0, "best_loss": math.inf, "bad_epochs": 0, "history": [],
             "best_state": None}
    if state_path is not None and state_path.exists():
        ck = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        state = ck["state"]
    y_t = torch.from_numpy(y_train.astype(np.float32))
    idx_train_t = torch.from_numpy(np.asarray(idx_train, dtype=np.int64))

    def val_loss() -> float:
        probs = predict_probs(model, images[torch.from_numpy(idx_val)], plan=plan)
        yy = y_train[idx_val].astype(np.float64)
        p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
        w = np.where(yy == 1, n_neg / n_pos, 1.0)   # the training objective (class-weighted BCE)
        return float(np.sum(w * -(yy * np.log(p) + (1 - yy) * np.log(1 - p))) / np.sum(w))

    bar = tqdm(total=epochs, initial=state["epoch"], desc=desc, leave=False, disable=not cfg.progress)
    while state["epoch"] < epochs:
        model.train()
        perm = idx_train_t[torch.randperm(len(idx_train_t), generator=gen)]
        run_loss, seen = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            bi = perm[i:i + cfg.batch_size]
            if len(bi) < 2:  # BatchNorm needs more than one image
                continue
            xb = images[bi].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            if cfg.augment:
                xb = augment_batch(xb, generator=gen if device.type == "cpu" else None)
            x = runtime.normalize(xb, IMAGENET_MEAN, IMAGENET_STD)
            if plan.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yb = y_t[bi].to(device)
            with runtime.autocast(plan):
                logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), yb, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * len(bi)
            seen += len(bi)
        state["epoch"] += 1
        rec = {"epoch": state["epoch"], "train_loss": run_loss / max(1, seen)}
        if idx_val is not None and len(idx_val):
            vl = val_loss()
            rec["val_loss"] = vl
            if vl < state["best_loss"] - 1e-4:
                state.update(best_loss=vl, best_epoch=state["epoch"], bad_epochs=0,
                             best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            else:
                state["bad_epochs"] += 1
        else:
            state["best_epoch"] = state["epoch"]
        state["history"].append(rec)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "epoch"})
        stop = idx_val is not None and state["bad_epochs"] >= cfg.patience
        if state_path is not None:
            ck = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                  "gen": gen.get_state(), "state": state}
            write_with(state_path, lambda tmp: torch.save(ck, tmp))
        if stop:
            break
    bar.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    info = {"best_epoch": int(state["best_epoch"]), "epochs_run": int(state["epoch"]),
            "best_val_loss": None if not math.isfinite(state["best_loss"]) else float(state["best_loss"]),
            "history": state["history"], "n_train": int(len(idx_train)), "n_train_pos": n_pos,
            "n_val": 0 if idx_val is None else int(len(idx_val)), "seconds": round(time.time() - t0, 1),
            "init_info": init_info}
    return model, info


def subsample_labels(df_train, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``df_train`` keeping ``fraction`` of the images of each class (at least 2 per class)."""
    keep = np.zeros(len(df_train), dtype=bool)
    if fraction >= 1:
        keep[:] = True
        return keep
    rng = np.random.default_rng(10_007 + seed)
    y = df_train["y"].to_numpy()
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        k = min(len(idx), max(2, int(round(fraction * len(idx)))))
        keep[rng.choice(idx, size=k, replace=False)] = True
    return keep


# ----------------------------------------------------------------------------------------- the step
@dataclasses.dataclass
class FinetuneResult:
    out: Path
    predictions: Any          # pandas DataFrame (out-of-fold)
    per_fold: Any             # pandas DataFrame
    summary: dict
    folds: Any                # pandas DataFrame (slide -> fold per seed)
    model_path: Path | None


def _load_data(cfg: FinetuneConfig):

    data = Path(cfg.data)
    if not data.exists() and cfg.data == FinetuneConfig.data:
        from glomlib.data.public import ensure_default_manifest

        ensure_default_manifest(data)
    df = read_manifest(data, positive_label=cfg.positive_label, require_labels=True)
    neg = df.attrs.get("negative_label")
    if not neg:
        others = sorted(set(df["label"]) - {cfg.positive_label, ""})
        neg = others[0] if others else ""
    if int((df["y"] == 1).sum()) == 0:
        raise ConfigError(f"positive_label={cfg.positive_label!r} matches no image of {cfg.data}; its labels are "
                          f"{sorted(set(df['label']))}. Pass the right positive_label (e.g. GS for glomeruli-pas).")
    return df.reset_index(drop=True), neg


def _prepare_out(cfg: FinetuneConfig) -> Path:

    if cfg.out in ("auto", "", None):
        if cfg.resume:
            raise ConfigError("resume=True needs out=<the interrupted run folder>.")
        return new_run_dir("runs", f"finetune-{cfg.init}")
    out = Path(cfg.out)
    if cfg.resume and out.exists() and (out / "config.json").exists():
        old = json.loads((out / "config.json").read_text())
        new = cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new)
                      if k not in _RESUME_FREE_FIELDS and json.dumps(old.get(k), default=str)
                      != json.dumps(new.get(k), default=str))
        if diff:
            raise ConfigError(f"resume=True but {out}/config.json differs in {diff}; resume with the same "
                              "parameters, or choose a new out folder.")
        return out
    if cfg.resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"resume=True but {out} has no config.json; it is not a fine-tune run folder.")
    return ensure_new_dir(out)


def run_finetune(cfg: FinetuneConfig | None = None, **params: Any) -> FinetuneResult:
    """Cross-validated fine-tuning for ``cfg.init`` (see module docstring). Returns a :class:`FinetuneResult`."""


    cfg = cfg if cfg is not None else FinetuneConfig.from_params(**params)
    cfg.validate()
    if cfg.init == "glom":
        resolve_ssl_checkpoint(cfg.ssl_checkpoint)  # fail before any work when the encoder is missing
    df, negative_label = _load_data(cfg)
    out = _prepare_out(cfg)
    (out / "figures").mkdir(exist_ok=True)
    cfg_dict = cfg.to_dict()
    cfg_dict["out"] = str(out)
    if not (out / "config.json").exists():
        write_json_atomic(out / "config.json", cfg_dict)
    fingerprint = data_fingerprint(df)
    plan = runtime.plan(cfg.device, cfg.precision)
    write_provenance(out, cfg_dict, fingerprint, extra={"runtime": plan.to_dict(), "negative_label": negative_label,
                                                       "n_images": int(len(df)), "n_positive": int(df["y"].sum())})
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    arr = np.asarray(load_images(list(df["path"]), cfg.image_size, **kw))
    images = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))
    y = df["y"].to_numpy().astype(int)

    fold_rows, pred_frames, per_fold = [], [], []
    jobs = [(s, k) for s in cfg.seeds for k in range(cfg.folds)]
    outer = tqdm(jobs, desc=f"{cfg.init} folds", disable=not cfg.progress)
    folds_by_seed: dict[int, np.ndarray] = {}
    for seed, k in outer:
        if seed not in folds_by_seed:
            folds_by_seed[seed] = np.asarray(assign_folds(df, n_folds=cfg.folds, seed=seed))
            ft = fold_table(df, folds_by_seed[seed])
            ft.insert(0, "seed", seed)
            fold_rows.append(ft)
        folds = folds_by_seed[seed]
        fdir = out / "checkpoints" / f"seed{seed}-fold{k}"
        done = fdir / "result.json"
        if done.exists() and (fdir / "predictions.csv").exists():
            res = json.loads(done.read_text())
            pred_frames.append(pd.read_csv(fdir / "predictions.csv", keep_default_na=False))
            per_fold.append(res["row"])
            continue
        test_idx = np.flatnonzero(folds == k)
        train_all = np.flatnonzero((folds >= 0) & (folds != k))  # fold -1: split=test rows, never in CV
        df_tr = df.iloc[train_all].reset_index(drop=True)
        keep = subsample_labels(df_tr, cfg.label_fraction, seed * 1000 + k)
        train_pool = train_all[keep]
        vmask = np.asarray(inner_validation(df.iloc[train_pool].reset_index(drop=True),
                                            fraction=cfg.val_fraction, seed=seed * 1000 + k), dtype=bool)
        idx_val, idx_train = train_pool[vmask], train_pool[~vmask]
        assert not set(df["slide"].iloc[test_idx]) & set(df["slide"].iloc[train_pool]), "slide leakage"
        model, info = train_one(cfg, images, y, idx_train, idx_val if len(idx_val) else None, seed=seed + 17 * k,
                                plan=plan, state_path=fdir / "state.pt", desc=f"{cfg.init} s{seed} f{k}")
        probs = predict_probs(model, images[torch.from_numpy(test_idx)], plan=plan)
        sub = df.iloc[test_idx]
        pred = pd.DataFrame({"path": sub["path"].to_numpy(), "slide": sub["slide"].to_numpy(),
                             "center": sub["center"].to_numpy(), "label": sub["label"].to_numpy(),
                             "y": sub["y"].to_numpy(), "prob": probs.astype(float),
                             "pred": (probs >= 0.5).astype(int), "fold": k, "seed": seed, "init": cfg.init,
                             "label_fraction": cfg.label_fraction})
        row = {"seed": seed, "fold": k, **M.binary_metrics(pred["y"], pred["prob"]),
               "n_train": info["n_train"], "n_train_pos": info["n_train_pos"], "n_val": info["n_val"],
               "best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"], "seconds": info["seconds"],
               "test_slides": ";".join(sorted(set(sub["slide"])))}
        write_csv_atomic(pred, fdir / "predictions.csv")
        write_json_atomic(fdir / "history.json", info["history"])
        write_json_atomic(done, {"row": row, "init_info": info["init_info"],
                                 "train_slides": sorted(set(df["slide"].iloc[idx_train])),
                                 "val_slides": sorted(set(df["slide"].iloc[idx_val])),
                                 "test_slides": sorted(set(sub["slide"])),
                                 "n_train_pool": int(len(train_all)), "n_train_used": int(len(train_pool))})
        (fdir / "state.pt").unlink(missing_ok=True)  # the fold is finished; its training state is not needed
        pred_frames.append(pred)
        per_fold.append(row)
        outer.set_postfix(auc=f"{row['auc']:.3f}")

    predictions = pd.concat(pred_frames, ignore_index=True)
    per_fold_df = pd.DataFrame(per_fold)
    folds_df = pd.concat(fold_rows, ignore_index=True)
    write_csv_atomic(predictions, out / "predictions.csv")
    write_csv_atomic(folds_df, out / "folds.csv")
    summary = M.summarise(per_fold_df)
    pooled = predictions.groupby("path", sort=False).agg(y=("y", "first"), prob=("prob", "mean"))
    metrics_doc = {
        "init": cfg.init, "backbone": cfg.backbone, "image_size": cfg.image_size,
        "label_fraction": cfg.label_fraction, "positive_label": cfg.positive_label,
        "negative_label": negative_label, "seeds": cfg.seeds, "folds": cfg.folds,
        "summary": summary, "per_fold": per_fold,
        "pooled_oof": M.binary_metrics(pooled["y"], pooled["prob"]),
        "std_note": "mean ± sample std (ddof=1) over all (seed, fold) test folds",
    }
    write_json_atomic(out / "metrics.json", metrics_doc)

    model_path = None
    if cfg.final_model:
        model_path = out / "model.safetensors"
        if not model_path.exists():
            pool = np.flatnonzero(folds_by_seed[cfg.seeds[0]] >= 0)  # every CV image; split=test rows stay out
            idx_all = pool[subsample_labels(df.iloc[pool], cfg.label_fraction, cfg.seeds[0])]
            n_ep = int(max(1, np.median([r["best_epoch"] for r in per_fold] or [cfg.epochs])))
            model, info = train_one(cfg, images, y, idx_all, None, seed=cfg.seeds[0], plan=plan,
                                    state_path=out / "checkpoints" / "final" / "state.pt", max_epochs=n_ep,
                                    desc=f"{cfg.init} final")
            meta = {"backbone": cfg.backbone, "image_size": int(cfg.image_size), "mean": list(IMAGENET_MEAN),
                    "std": list(IMAGENET_STD), "positive_label": cfg.positive_label,
                    "negative_label": negative_label, "init": cfg.init, "epochs": n_ep,
                    "n_train": int(len(idx_all)), "label_fraction": cfg.label_fraction,
                    "data_fingerprint": fingerprint, "threshold": 0.5,
                    "cv_auc": summary.get("auc", {}).get("text")}
            save_model(model, meta, model_path)
            held = np.flatnonzero(folds_by_seed[cfg.seeds[0]] < 0)
            if len(held):  # rows with split=test: never in CV, predicted once by the final model
                hp = predict_probs(model, images[torch.from_numpy(held)], plan=plan)
                sub = df.iloc[held]
                hdf = pd.DataFrame({"path": sub["path"].to_numpy(), "slide": sub["slide"].to_numpy(),
                                    "label": sub["label"].to_numpy(), "y": sub["y"].to_numpy(), "prob": hp,
                                    "pred": (hp >= 0.5).astype(int), "init": cfg.init})
                write_csv_atomic(hdf, out / "heldout_predictions.csv")
                write_json_atomic(out / "heldout_metrics.json", M.binary_metrics(hdf["y"], hdf["prob"]))
            (out / "checkpoints" / "final" / "state.pt").unlink(missing_ok=True)
    return FinetuneResult(out=out, predictions=predictions, per_fold=per_fold_df, summary=summary,
                          folds=folds_df, model_path=model_path)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a finished fine-tune run folder: config, metrics, predictions, folds."""

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.json; is it a finished fine-tune run folder?")
    return {
        "dir": run_dir,
        "config": json.loads((run_dir / "config.json").read_text()),
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "predictions": pd.read_csv(run_dir / "predictions.csv", keep_default_na=False),
        "folds": pd.read_csv(run_dir / "folds.csv", keep_default_na=False),
    }


# ------------------------------------------------------------------------------------------------- CLI
def add_config_arguments(parser: argparse.ArgumentParser, cls: type[StepConfig]) -> None:
    """One ``--name`` option per config field (lists: comma-separated; bools: true/false)."""
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        name = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(name, dest=f.name, type=_parse_bool, default=None, metavar="true|false",
                                help=f"(default {default})")
        elif isinstance(default, list):
            parser.add_argument(name, dest=f.name, default=None, metavar="A,B",
                                help=f"comma-separated (default {','.join(map(str, default))})")
        else:
            parser.add_argument(name, dest=f.name, type=type(default), default=None, help=f"(default {default})")


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def config_from_args(cls: type[StepConfig], args: argparse.Namespace):
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls.from_params(**params)


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune + slide-grouped cross-validation for one init",
                              description=__doc__.splitlines()[0])
    add_config_arguments(p, FinetuneConfig)

    def _run(args) -> int:
        cfg = config_from_args(FinetuneConfig, args)
        res = run_finetune(cfg)
        print(f"run folder: {res.out}")
        for m in ("auc", "accuracy", "f1_weighted"):
            print(f"{m:>12}: {res.summary[m]['text']}")
        return 0

    p.set_defaults(func=_run)


__all__ = ["FinetuneConfig", "FinetuneResult", "run_finetune", "load_run", "train_one", "build_classifier",
           "resolve_ssl_checkpoint", "find_latest_encoder", "subsample_labels", "augment_batch",
           "INITS", "register"]
