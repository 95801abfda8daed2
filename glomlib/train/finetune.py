"""Fine-tune a classifier from one initialisation and evaluate it with slide-grouped cross-validation.

Initialisations (``init``):

* ``glom`` — the SSL encoder from notebook 02 (``ssl_checkpoint``: a file, an SSL run folder, or ``latest`` =
  the newest ``runs/**/encoder.safetensors``); its backbone must match ``backbone``.
* ``imagenet`` — ImageNet weights, offline (see :mod:`glomlib.models.backbones`).
* ``scratch`` — random weights.

Protocol (identical for every init, so the comparison is fair):

1. Folds: ``glomlib.data.splits.assign_folds`` — slide-grouped (patient-grouped when patients differ), stratified,
   ``folds`` folds, repeated for each seed in ``seeds``. ``folds.csv`` records which slide is in which fold.
2. For each label fraction in ``label_fractions``, seed and fold (the same folds for every fraction): the training
   folds are subsampled to that fraction of their images (stratified by label, by seed; the test fold is never
   touched); a validation split (``val_fraction``, grouped by slide) is carved from the remaining training
   images; the model (backbone + dropout + linear head) is trained with AdamW + warm-up/cosine schedule,
   class-weighted BCE (``pos_weight = n_neg / n_pos``), light augmentation (flips, 90° rotations, colour
   jitter). Step budget: when ``epochs`` passes over a small training set would make fewer optimiser steps than
   the budget (``min_steps=-1``: as many as the same fold makes with all labels), each epoch makes several passes
   (:func:`passes_per_epoch`), so every fraction gets as many updates and the same ``epochs`` validation checks.
   After every epoch the validation loss is measured; the best epoch's weights are kept and training stops after
   ``patience`` epochs without improvement.
   The test fold is predicted once, with the selected weights.
3. Every fold model is kept: ``checkpoints/<seed{s}-fold{k} | frac{f}-seed{s}-fold{k}>/model.safetensors``
   (float16 unless that moves a test probability by more than 1e-3, then float32; metadata as the final model's
   plus ``seed``, ``fold``, ``test_slides``, ``label_fraction``), next to that fold's predictions, history and
   result.json. Folds are checkpointed after each epoch (atomic writes); with ``resume=True`` finished folds are
   read back, an interrupted fold continues from its last epoch.
4. A final model is trained on all labelled images (the largest fraction) for the median of the folds' selected
   epoch counts and saved as a self-describing ``model.safetensors`` (see :mod:`glomlib.evaluate.predict`).

Outputs in ``out``: config.json, provenance.json, folds.csv, predictions.csv (out-of-fold, every image, seed and
label fraction), metrics.json (per fold + mean ± std; ``by_fraction`` for every fraction), model.safetensors,
checkpoints/ (per-fold models, predictions and results).
"""

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
import torch.nn.functional as F
from tqdm.auto import tqdm

from glomlib.core import progress as live, runtime
from glomlib.core.config import ConfigError, StepConfig, add_config_arguments, config_from_args
from glomlib.core.io import (ensure_new_dir, new_run_dir, open_for_resume, run_status, write_csv_atomic,
                             write_json_atomic, write_provenance, write_with)
from glomlib.core.runtime import PRECISIONS
from glomlib.data.cache import load_images, stain_report
from glomlib.data.manifest import data_fingerprint, read_manifest
from glomlib.data.stain import STAIN_METHODS, write_stain_report
from glomlib.data.splits import assign_folds, fold_table, inner_validation
from glomlib.evaluate import metrics as M
from glomlib.evaluate.runs import INITS, load_run
from glomlib.train.augment import hed_jitter
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from glomlib.models.files import load_encoder_into, load_model, save_model
from glomlib.models.heads import build_classifier
from glomlib.models.inference import predict_probs

MODEL_FORMAT = "glomlib.train.finetune.model/1"
# Config fields that may change between an interrupted run and its resumption.
_RESUME_FREE_FIELDS = {"resume", "device", "num_workers", "out", "progress", "final_model", "cache_dir"}


@dataclasses.dataclass
class FinetuneConfig(StepConfig):
    """Parameters of notebook 03 (``notebooks/03_finetune.ipynb``) and of ``glomlib finetune``."""

    init: str = "glom"                      # glom | imagenet | scratch
    ssl_checkpoint: str = "latest"          # glom only: encoder.safetensors, an SSL run folder, or "latest"; with cv=centre it may contain {centre}: one encoder per held-out centre (pretrained without it)
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
    label_fractions: list = dataclasses.field(default_factory=lambda: [1.0])  # shares of the training labels, one CV per share (stratified; test folds untouched)
    min_steps: int = -1                     # step budget per fold: -1 = as many optimiser steps as with all labels (small label fractions make several passes per epoch), 0 = one pass per epoch, N = at least N steps
    positive_label: str = ""                # label of the positive class ("" = the one dataset.json names)
    label_source: str = ""                  # training labels: "" the label column, "consensus" the raters' majority (label_<rater> columns), or a rater name
    device: str = "auto"                    # auto | cpu | cuda | cuda:N | mps
    patience: int = 4                       # early stopping: epochs without validation improvement
    val_fraction: float = 0.2               # share of the training slides held out for model selection
    augment: bool = True                    # flips, 90-degree rotations, colour jitter during training
    stain_augment: float = 0.0              # HED (optical-density) stain augmentation strength during training; 0 = off, 0.05 typical
    stain_normalize: str = ""               # "" (off) | reinhard (fixed LAB colour target) | macenko (fixed stain vectors, torchstain): applied in training and prediction
    cv: str = "slide"                       # slide: slide/patient-grouped folds | centre: leave one centre out (folds = number of centres)
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
        if self.cv not in ("slide", "centre", "center"):
            raise ConfigError(f"cv={self.cv!r}: choose 'slide' (slide-grouped folds) or 'centre' (leave one centre out).")
        if "{center}" in str(self.ssl_checkpoint):
            self.ssl_checkpoint = str(self.ssl_checkpoint).replace("{center}", "{centre}")
        if "{centre}" in str(self.ssl_checkpoint):
            if self.cv == "slide" or self.init != "glom":
                raise ConfigError(f"ssl_checkpoint={self.ssl_checkpoint!r} names a {{centre}} placeholder, which "
                                  "only leave-one-centre-out glom runs fill in: use init=glom with cv=centre, or "
                                  "give one encoder.")
            if self.final_model:
                raise ConfigError(f"ssl_checkpoint={self.ssl_checkpoint!r}: one encoder per held-out centre leaves "
                                  "no encoder for the final model, which trains on every centre. Pass "
                                  "final_model=false (the held-out folds are the result).")
        if self.stain_normalize not in STAIN_METHODS:
            raise ConfigError(f"stain_normalize={self.stain_normalize!r}: choose one of {list(STAIN_METHODS)} ('' = off).")
        if not 0 <= float(self.stain_augment) < 1:
            raise ConfigError(f"stain_augment={self.stain_augment}: must be in [0, 1) (0 = off, 0.05 typical).")
        if isinstance(self.label_fractions, (int, float)):
            self.label_fractions = [self.label_fractions]
        if isinstance(self.label_fractions, str):  # "0.1,1" or "[0.1, 1.0]" from the shell / papermill -p
            self.label_fractions = [x for x in self.label_fractions.strip("[]() ").replace(" ", "").split(",") if x]
        try:
            fr = [float(f) for f in self.label_fractions]
        except (TypeError, ValueError):
            raise ConfigError(f"label_fractions={self.label_fractions!r}: give numbers in (0, 1], e.g. [0.1, 1.0].")
        if not fr or any(not (0 < f <= 1) for f in fr):
            raise ConfigError(f"label_fractions={self.label_fractions}: each must be in (0, 1], e.g. [0.1, 1.0].")
        if len(set(fr)) != len(fr):
            raise ConfigError(f"label_fractions={self.label_fractions}: a fraction is listed twice.")
        self.label_fractions = sorted(fr)
        if int(self.min_steps) < -1:
            raise ConfigError(f"min_steps={self.min_steps}: -1 (as many steps as with all labels), 0 (off) or N > 0.")
        if not (0 < float(self.val_fraction) < 1):
            raise ConfigError(f"val_fraction={self.val_fraction}: must be in (0, 1).")
        if int(self.folds) < 2:
            raise ConfigError(f"folds={self.folds}: need at least 2 folds for cross-validation.")
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be a positive integer.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}.")


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


def centre_checkpoints(spec: str, centres: list[str]) -> dict[str, Path]:
    """``{centre: encoder file}`` for an ``ssl_checkpoint`` with a ``{centre}`` placeholder; every file must exist
    (checked before any training), the message lists the missing ones and how to make them."""
    found, missing = {}, []
    for c in centres:
        try:
            found[c] = resolve_ssl_checkpoint(spec.replace("{centre}", c))
        except FileNotFoundError:
            missing.append(spec.replace("{centre}", c))
    if missing:
        raise FileNotFoundError(
            f"ssl_checkpoint={spec!r}: no encoder for held-out centre(s) {missing}. Pretrain one per centre without "
            f"it, e.g. `glomlib ssl --exclude-centre <C> --out {spec.replace('{centre}', '<C>')}` for C in {centres}.")
    return found


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
            for k in ("exclude_centre", "stain_normalize"):
                if k in meta:
                    info["ssl_meta"][k] = meta[k]
            if str(meta.get("stain_normalize", "") or "") != str(cfg.stain_normalize or ""):
                import warnings

                warnings.warn(f"The SSL encoder was pretrained with stain_normalize={meta.get('stain_normalize', '')!r} "
                              f"but this fine-tune uses {cfg.stain_normalize!r}; the encoder sees other colours than "
                              "it learnt from.")
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


# ------------------------------------------------------------------------------------------- training
def train_one(cfg: FinetuneConfig, images, y_train: np.ndarray, idx_train: np.ndarray, idx_val: np.ndarray | None,
              *, seed: int, plan: runtime.Plan, state_path: Path | None = None, max_epochs: int | None = None,
              min_steps: int | None = None, desc: str = "train") -> tuple[Any, dict[str, Any]]:
    """Train one model from ``cfg.init`` on ``images[idx_train]``; select the epoch on ``images[idx_val]``.

    ``y_train`` holds labels for every image (indexed like ``images``). Without ``idx_val`` the model trains for
    ``max_epochs`` epochs and the last weights are kept. ``state_path``: per-epoch checkpoint for resuming.
    ``min_steps``: the step budget (default ``cfg.min_steps``; -1 counts as 0 here, :func:`run_finetune` resolves it).
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
                         "use larger label_fractions or fewer folds.")
    pos_weight = torch.tensor(n_neg / n_pos, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = cfg.min_steps if min_steps is None else min_steps
    passes = passes_per_epoch(len(idx_train), cfg.batch_size, epochs, max(0, int(budget)))
    steps_per_epoch = passes * max(1, math.ceil(len(idx_train) / cfg.batch_size))
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
        perm = torch.cat([idx_train_t[torch.randperm(len(idx_train_t), generator=gen)] for _ in range(passes)])
        run_loss, seen, t_epoch = 0.0, 0, time.time()
        for i in range(0, len(perm), cfg.batch_size):
            bi = perm[i:i + cfg.batch_size]
            if len(bi) < 2:  # BatchNorm needs more than one image
                continue
            xb = images[bi].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            if cfg.augment:
                xb = augment_batch(xb, generator=gen if device.type == "cpu" else None)
            if cfg.stain_augment:
                xb = hed_jitter(xb, float(cfg.stain_augment), gen if device.type == "cpu" else None)
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
        live.report(f"fine-tune {desc} epoch {state['epoch']}/{epochs}: train loss {rec['train_loss']:.3f}"
                        + (f", val loss {rec['val_loss']:.3f}" if "val_loss" in rec else "")
                        + f", {seen / max(time.time() - t_epoch, 1e-9):.1f} images/s")
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
            "passes_per_epoch": passes, "steps_per_epoch": steps_per_epoch,
            "init_info": init_info}
    return model, info


def passes_per_epoch(n_train: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Passes over the training images per epoch so that ``epochs`` epochs make at least ``min_steps`` optimiser
    steps (1 when the training set is large enough). Validation, early stopping (``patience``) and the schedule
    still count epochs, so every label fraction gets the same number of model-selection checks."""
    steps = max(1, math.ceil(n_train / batch_size))
    return max(1, math.ceil(int(min_steps) / (steps * max(1, int(epochs)))))


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
    summaries: dict = dataclasses.field(default_factory=dict)  # label fraction ("0.1") -> summary


def fold_dir_name(label_fraction: float, seed: int, fold: int) -> str:
    """``checkpoints/`` sub-folder of one (label fraction, seed, fold): ``seed0-fold3`` for all labels,
    ``frac0.1-seed0-fold3`` for a fraction."""
    return f"seed{seed}-fold{fold}" if float(label_fraction) >= 1 else f"frac{float(label_fraction):g}-seed{seed}-fold{fold}"


def _model_meta(cfg: FinetuneConfig, negative_label: str, fingerprint: str, **extra: Any) -> dict[str, Any]:
    """Metadata of a saved classifier (final or fold model); ``extra``: epochs, n_train, label_fraction, fold..."""
    return {"backbone": cfg.backbone, "image_size": int(cfg.image_size), "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "positive_label": cfg.positive_label, "negative_label": negative_label,
            "init": cfg.init, "data_fingerprint": fingerprint, "threshold": 0.5,
            "stain_normalize": cfg.stain_normalize, **extra}


#: largest |probability difference| tolerated between a fold model read back from its float16 file and the
#: in-run out-of-fold predictions; above it the file is rewritten in float32.
FOLD_MODEL_TOLERANCE = 1e-3


def zero_nonfinite_weights(model) -> list[str]:
    """Set non-finite weight entries to 0 in place and return the names of the tensors that held them.

    Why: at tiny image sizes a 3x3 kernel on a 1x1 feature map has taps that only ever see zero padding; the CPU's
    bf16 kernels skip the padding and can leave those taps' gradients undefined, so AdamW writes NaN into weights
    that never touch an image (the predictions stay finite). Zero is what they multiply anyway. Real divergence
    gives non-finite predictions, which :func:`save_fold_model` refuses."""
    names = []
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                t.copy_(torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0))
                names.append(name)
    return names


def save_fold_model(model, meta: dict[str, Any], path: Path, test_images, probs: np.ndarray,
                    plan: runtime.Plan) -> dict[str, Any]:
    """Save a fold model as float16 safetensors (half the size), read it back and predict its test images again;
    if any probability moves by more than :data:`FOLD_MODEL_TOLERANCE` it is saved in float32 instead.
    Returns ``{"file", "dtype", "max_abs_diff", "zeroed_nonfinite"}`` for result.json."""
    if not np.all(np.isfinite(probs)):
        raise FloatingPointError(f"{path.parent.name}: the model predicts NaN/inf probabilities (training diverged); "
                                 "lower lr or use precision=fp32, then fine-tune again.")
    zeroed = zero_nonfinite_weights(model)
    if zeroed:
        meta = {**meta, "zeroed_nonfinite": zeroed}
    tried: dict[str, float] = {}
    for dtype in (torch.float16, torch.float32):
        save_model(model, meta, path, dtype=dtype)
        loaded, _ = load_model(path, device=str(plan.device))
        if plan.channels_last:
            loaded = loaded.to(memory_format=torch.channels_last)
        diff = float(np.max(np.abs(predict_probs(loaded, test_images, plan=plan) - probs))) if len(probs) else 0.0
        tried[str(dtype).replace("torch.", "")] = diff
        if diff <= FOLD_MODEL_TOLERANCE:
            break
    return {"file": path.name, "dtype": str(dtype).replace("torch.", ""), "max_abs_diff": diff,
            "max_abs_diff_tried": tried, "zeroed_nonfinite": zeroed}


def _load_data(cfg: FinetuneConfig):

    data = Path(cfg.data)
    if not data.exists() and cfg.data == FinetuneConfig.data:
        from glomlib.data.public import ensure_default_manifest

        ensure_default_manifest(data)
    df = read_manifest(data, positive_label=cfg.positive_label, require_labels=True, label_source=cfg.label_source)
    pos = df.attrs["positive_label"]  # resolved from the manifest's dataset.json when cfg.positive_label == ""
    neg = df.attrs.get("negative_label")
    if not neg:
        others = sorted(set(df["label"]) - {pos, ""})
        neg = others[0] if others else ""
    if int((df["y"] == 1).sum()) == 0:
        raise ConfigError(f"positive_label={pos!r} matches no image of {cfg.data}; its labels are "
                          f"{sorted(set(df['label']))}. Pass the right positive_label (e.g. GS for glomeruli-pas).")
    return df.reset_index(drop=True), pos, neg


def _prepare_out(cfg: FinetuneConfig, fingerprint: str | None = None) -> Path:
    """A new run folder, or with resume=True the unfinished run in ``out`` made from the same data
    (``fingerprint``) and training settings; anything else is refused, listing the differences (ResumeError)."""
    if cfg.out in ("auto", "", None):
        if cfg.resume:
            raise ConfigError("resume=True needs out=<the interrupted run folder>.")
        return new_run_dir("runs", f"finetune-{cfg.init}")
    if cfg.resume:
        return open_for_resume(cfg.out, cfg.to_dict(), fingerprint, free_fields=_RESUME_FREE_FIELDS,
                               finished=("model.safetensors",) if cfg.final_model else ("metrics.json",),
                               command="e.g. --out auto")
    return ensure_new_dir(cfg.out)


def resume_hint(run_dir: str | Path) -> str:
    return f"glomlib finetune --out {run_dir} --resume true (with the same data and parameters)"


def run_finetune(cfg: FinetuneConfig | None = None, **params: Any) -> FinetuneResult:
    """Cross-validated fine-tuning for ``cfg.init`` (see module docstring). Returns a :class:`FinetuneResult`.
    The run folder's ``run.json`` says running / finished / failed (with how to resume or start again)."""
    with run_status("finetune", resume_hint):
        return _run_finetune(cfg, **params)


def _run_finetune(cfg: FinetuneConfig | None = None, **params: Any) -> FinetuneResult:


    cfg = cfg if cfg is not None else FinetuneConfig.from_params(**params)
    cfg.validate()
    per_centre = cfg.init == "glom" and "{centre}" in str(cfg.ssl_checkpoint)
    if cfg.init == "glom" and not per_centre:
        resolve_ssl_checkpoint(cfg.ssl_checkpoint)  # fail before any work when the encoder is missing
    df, positive_label, negative_label = _load_data(cfg)
    encoders = (centre_checkpoints(cfg.ssl_checkpoint, sorted(set(df["center"].astype(str).str.strip()) - {""}))
                if per_centre else {})
    # positive_label "" means "the one the manifest's dataset.json names": from here on, the label it names
    cfg = dataclasses.replace(cfg, positive_label=positive_label)
    fingerprint = data_fingerprint(df)
    out = _prepare_out(cfg, fingerprint)
    (out / "figures").mkdir(exist_ok=True)
    cfg_dict = cfg.to_dict()
    cfg_dict["out"] = str(out)
    if not (out / "config.json").exists():
        write_json_atomic(out / "config.json", cfg_dict)
    plan = runtime.plan(cfg.device, cfg.precision, workload=runtime.Workload(
        f"finetune-{cfg.backbone}", cfg.image_size, cfg.batch_size, lambda: build_classifier(cfg.backbone)))
    if not (out / "provenance.json").exists():  # written once, when the data is read; a resume never rewrites it
        write_provenance(out, cfg_dict, fingerprint, extra={"runtime": plan.to_dict(), "positive_label": positive_label,
                                                           "negative_label": negative_label,
                                                           "n_images": int(len(df)), "n_positive": int(df["y"].sum())})
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    arr = load_images(list(df["path"]), cfg.image_size, stain=cfg.stain_normalize, **kw)  # normalised once, cached
    if cfg.stain_normalize:  # which images the method had to leave as they were (never dropped): stain.json
        write_stain_report(out, stain_report(arr), df)
    images = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))
    y = df["y"].to_numpy().astype(int)

    fold_rows, pred_frames, per_fold = [], [], []
    jobs = [(f, s, k) for f in cfg.label_fractions for s in cfg.seeds for k in range(cfg.folds)]
    outer = tqdm(jobs, desc=f"{cfg.init} folds", disable=not cfg.progress)
    folds_by_seed: dict[int, np.ndarray] = {}
    t_jobs, n_trained = time.time(), 0
    for j, (frac, seed, k) in enumerate(outer):
        if seed not in folds_by_seed:
            folds_by_seed[seed] = np.asarray(assign_folds(df, n_folds=cfg.folds, seed=seed,
                                                          by="slide" if cfg.cv == "slide" else "center"))
            ft = fold_table(df, folds_by_seed[seed])
            ft.insert(0, "seed", seed)
            fold_rows.append(ft)
        folds = folds_by_seed[seed]
        fdir = out / "checkpoints" / fold_dir_name(frac, seed, k)
        done = fdir / "result.json"
        if done.exists() and (fdir / "predictions.csv").exists():
            res = json.loads(done.read_text())
            pred_frames.append(pd.read_csv(fdir / "predictions.csv", keep_default_na=False))
            per_fold.append(res["row"])
            continue
        test_idx = np.flatnonzero(folds == k)
        train_all = np.flatnonzero((folds >= 0) & (folds != k))  # fold -1: split=test rows, never in CV
        df_tr = df.iloc[train_all].reset_index(drop=True)
        keep = subsample_labels(df_tr, frac, seed * 1000 + k)
        train_pool = train_all[keep]
        vmask = np.asarray(inner_validation(df.iloc[train_pool].reset_index(drop=True),
                                            fraction=cfg.val_fraction, seed=seed * 1000 + k), dtype=bool)
        idx_val, idx_train = train_pool[vmask], train_pool[~vmask]
        assert not set(df["slide"].iloc[test_idx]) & set(df["slide"].iloc[train_pool]), "slide leakage"
        budget = cfg.min_steps
        if budget < 0:  # as many steps as this fold makes with all labels (the same validation rule, at fraction 1)
            vfull = np.asarray(inner_validation(df_tr, fraction=cfg.val_fraction, seed=seed * 1000 + k), dtype=bool)
            budget = int(cfg.epochs) * max(1, math.ceil(int((~vfull).sum()) / cfg.batch_size))
        fold_cfg = cfg
        if encoders:  # leave-one-centre-out glom: the encoder pretrained without this fold's centre
            (held_out,) = set(df["center"].iloc[test_idx].astype(str).str.strip())
            fold_cfg = dataclasses.replace(cfg, ssl_checkpoint=str(encoders[held_out]))
        model, info = train_one(fold_cfg, images, y, idx_train, idx_val if len(idx_val) else None, seed=seed + 17 * k,
                                plan=plan, state_path=fdir / "state.pt", min_steps=budget,
                                desc=f"{cfg.init} {frac:.0%} s{seed} f{k}")
        test_images = images[torch.from_numpy(test_idx)]
        probs = predict_probs(model, test_images, plan=plan)
        sub = df.iloc[test_idx]
        test_slides = sorted(set(sub["slide"]))
        pred = pd.DataFrame({"path": sub["path"].to_numpy(), "slide": sub["slide"].to_numpy(),
                             "center": sub["center"].to_numpy(), "label": sub["label"].to_numpy(),
                             "y": sub["y"].to_numpy(), "prob": probs.astype(float),
                             "pred": (probs >= 0.5).astype(int), "fold": k, "seed": seed, "init": cfg.init,
                             "label_fraction": frac})
        row = {"label_fraction": frac, "seed": seed, "fold": k, **M.binary_metrics(pred["y"], pred["prob"]),
               "n_train": info["n_train"], "n_train_pos": info["n_train_pos"], "n_val": info["n_val"],
               "best_epoch": info["best_epoch"], "epochs_run": info["epochs_run"],
               "passes_per_epoch": info["passes_per_epoch"], "steps_per_epoch": info["steps_per_epoch"],
               "seconds": info["seconds"], "test_slides": ";".join(test_slides), "checkpoint": fdir.name}
        meta = _model_meta(cfg, negative_label, fingerprint, label_fraction=frac, seed=seed, fold=k,
                           test_slides=test_slides, epochs=info["best_epoch"], n_train=info["n_train"],
                           cv_auc=f"{row['auc']:.3f} (this fold)")
        model_file = save_fold_model(model, meta, fdir / "model.safetensors", test_images, probs, plan)
        write_csv_atomic(pred, fdir / "predictions.csv")
        write_json_atomic(fdir / "history.json", info["history"])
        write_json_atomic(done, {"row": row, "init_info": info["init_info"],
                                 "train_slides": sorted(set(df["slide"].iloc[idx_train])),
                                 "val_slides": sorted(set(df["slide"].iloc[idx_val])),
                                 "test_slides": test_slides, "model": model_file,
                                 "n_train_pool": int(len(train_all)), "n_train_used": int(len(train_pool))})
        (fdir / "state.pt").unlink(missing_ok=True)  # the fold is finished; its training state is not needed
        pred_frames.append(pred)
        per_fold.append(row)
        outer.set_postfix(auc=f"{row['auc']:.3f}")
        n_trained += 1
        live.report(f"fine-tune {cfg.init}: fold {j + 1}/{len(jobs)} done (AUC {row['auc']:.3f}), "
                        + live.time_left(n_trained, n_trained + len(jobs) - j - 1, time.time() - t_jobs))

    predictions = pd.concat(pred_frames, ignore_index=True)
    per_fold_df = pd.DataFrame(per_fold)
    folds_df = pd.concat(fold_rows, ignore_index=True)
    write_csv_atomic(predictions, out / "predictions.csv")
    write_csv_atomic(folds_df, out / "folds.csv")
    main_frac = max(cfg.label_fractions)
    by_fraction: dict[str, Any] = {}
    for frac in cfg.label_fractions:
        rows_f = [r for r in per_fold if float(r["label_fraction"]) == frac]
        pf = predictions[predictions["label_fraction"].astype(float) == frac]
        pooled = pf.groupby("path", sort=False).agg(y=("y", "first"), prob=("prob", "mean"))
        by_fraction[f"{frac:g}"] = {"label_fraction": frac, "summary": M.summarise(pd.DataFrame(rows_f)),
                                    "per_fold": rows_f, "pooled_oof": M.binary_metrics(pooled["y"], pooled["prob"])}
    main = by_fraction[f"{main_frac:g}"]
    summary = main["summary"]
    metrics_doc = {
        "init": cfg.init, "backbone": cfg.backbone, "image_size": cfg.image_size,
        "label_fraction": main_frac, "label_fractions": cfg.label_fractions, "min_steps": cfg.min_steps,
        "positive_label": cfg.positive_label, "negative_label": negative_label, "seeds": cfg.seeds,
        "folds": cfg.folds, "summary": summary, "per_fold": main["per_fold"], "pooled_oof": main["pooled_oof"],
        "by_fraction": by_fraction,
        "std_note": "mean ± sample std (ddof=1) over all (seed, fold) test folds; summary, per_fold and pooled_oof "
                    "are for the largest label fraction, by_fraction holds every fraction",
    }
    write_json_atomic(out / "metrics.json", metrics_doc)

    model_path = None
    if cfg.final_model:
        model_path = out / "model.safetensors"
        if not model_path.exists():
            pool = np.flatnonzero(folds_by_seed[cfg.seeds[0]] >= 0)  # every CV image; split=test rows stay out
            idx_all = pool[subsample_labels(df.iloc[pool], main_frac, cfg.seeds[0])]
            n_ep = int(max(1, np.median([r["best_epoch"] for r in main["per_fold"]] or [cfg.epochs])))
            budget = cfg.min_steps if cfg.min_steps >= 0 else n_ep * max(1, math.ceil(len(pool) / cfg.batch_size))
            model, info = train_one(cfg, images, y, idx_all, None, seed=cfg.seeds[0], plan=plan,
                                    state_path=out / "checkpoints" / "final" / "state.pt", max_epochs=n_ep,
                                    min_steps=budget, desc=f"{cfg.init} final")
            # operating threshold: Youden's J on the pooled out-of-fold predictions (validation data, never refit)
            oof = predictions[predictions["label_fraction"].astype(float) == main_frac]
            meta = _model_meta(cfg, negative_label, fingerprint, label_fraction=main_frac, epochs=n_ep,
                               n_train=int(len(idx_all)), cv_auc=summary.get("auc", {}).get("text"),
                               threshold=M.threshold_from_oof(oof, "youden"),
                               threshold_rule="youden (pooled out-of-fold predictions)")
            zeroed = zero_nonfinite_weights(model)  # see the function: taps that only ever see padding
            save_model(model, {**meta, "zeroed_nonfinite": zeroed} if zeroed else meta, model_path)
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
                          folds=folds_df, model_path=model_path, summaries={f: v["summary"] for f, v in by_fraction.items()})


# ------------------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune + slide-grouped cross-validation for one init",
                              description=__doc__.splitlines()[0])
    add_config_arguments(p, FinetuneConfig)

    def _run(args) -> int:
        res = run_finetune(config_from_args(FinetuneConfig, args))
        print(f"run folder: {res.out}")
        for m in ("auc", "accuracy", "f1_weighted"):
            print(f"{m:>12}: {res.summary[m]['text']}")
        return 0

    p.set_defaults(func=_run)


__all__ = ["FinetuneConfig", "FinetuneResult", "run_finetune", "load_run", "train_one", "build_classifier",
           "resolve_ssl_checkpoint", "find_latest_encoder", "subsample_labels", "augment_batch",
           "INITS", "register"]
