"""One fine-tuned model.

:func:`train_one`: AdamW, warm-up + cosine, class-weighted BCE, light augmentation,
epoch selection on a validation split, early stopping, per-epoch state for resuming)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from glomlib.core import progress as live
from glomlib.core import runtime
from glomlib.core.io import write_with
from glomlib.data.splits import nested_subset
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from glomlib.models.heads import build_classifier
from glomlib.models.inference import predict_probs
from glomlib.train.augment import hed_jitter, light_augment
from glomlib.train.finetune.config import FinetuneConfig
from glomlib.train.finetune.encoder import build_initial_backbone
from glomlib.train.schedule import warmup_cosine


def passes_per_epoch(n_train: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Passes over the training images per epoch so that ``epochs`` epochs make at least ``min_steps`` optimiser
    steps (1 when the training set is large enough). Validation, early stopping (``patience``) and the schedule
    still count epochs, so every label fraction gets the same number of model-selection checks."""
    steps = max(1, math.ceil(n_train / batch_size))
    return max(1, math.ceil(int(min_steps) / (steps * max(1, int(epochs)))))


def subsample_labels(df_train, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``df_train``: the label budget ``fraction`` (a share, or ``-N`` = N per class) as a prefix
    of one fixed class-stratified order (:func:`glomlib.data.splits.nested_subset`): budgets are nested."""
    return nested_subset(df_train["y"].to_numpy(), fraction, seed)


@dataclasses.dataclass
class _Fit:
    """One model's training: data, model, optimiser, schedule, generator and the resumable ``state``."""

    cfg: FinetuneConfig
    images: torch.Tensor
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray | None
    plan: runtime.Plan
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    pos_weight: float
    passes: int
    state: dict[str, Any]


def _start(cfg, images, y, train, val, plan, encoder, epochs: int, min_steps: int, seed: int, desc: str):
    backbone, dim, init_info = build_initial_backbone(cfg, encoder)
    model = build_classifier(cfg.backbone, dim, backbone).to(plan.device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_pos, n_neg = int((y[train] == 1).sum()), int((y[train] == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{desc}: the training images hold only one class ({n_pos} positive, {n_neg} negative); "
            "use larger label_fractions or fewer folds."
        )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    passes = passes_per_epoch(len(train), cfg.batch_size, epochs, max(0, int(min_steps)))
    steps_per_epoch = passes * max(1, math.ceil(len(train) / cfg.batch_size))
    total = epochs * steps_per_epoch
    sched = warmup_cosine(opt, total, min(steps_per_epoch, max(1, total // 10)))
    state = {"epoch": 0, "best_epoch": 0, "best_loss": math.inf, "bad_epochs": 0, "history": [], "best_state": None}
    gen = torch.Generator().manual_seed(seed)
    fit = _Fit(cfg, images, y, train, val, plan, model, opt, sched, gen, n_neg / n_pos, passes, state)
    info = {"n_train": int(len(train)), "n_train_pos": n_pos, "passes_per_epoch": passes}
    return fit, {**info, "steps_per_epoch": steps_per_epoch, "init_info": init_info}


def _load_state(fit: _Fit, path: Path) -> None:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    fit.model.load_state_dict(ck["model"])
    fit.opt.load_state_dict(ck["opt"])
    fit.sched.load_state_dict(ck["sched"])
    fit.gen.set_state(ck["gen"])
    fit.state = ck["state"]
    if "rng" in ck:  # dropout (and augmentation on a GPU) draw from the global generators
        runtime.set_rng_state(ck["rng"])


def _save_state(fit: _Fit, path: Path) -> None:
    ck = {"model": fit.model.state_dict(), "opt": fit.opt.state_dict(), "sched": fit.sched.state_dict()}
    ck.update(gen=fit.gen.get_state(), state=fit.state, rng=runtime.rng_state())
    write_with(path, lambda tmp: torch.save(ck, tmp))


def _batch(fit: _Fit, bi: torch.Tensor) -> torch.Tensor:
    """Training images ``bi``: augmented (on CPU from the fold's generator), ImageNet-normalised."""
    cfg, device = fit.cfg, fit.plan.device
    g = fit.gen if device.type == "cpu" else None
    xb = fit.images[bi].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if cfg.augment:
        xb = light_augment(xb, generator=g)
    if cfg.stain_augment:
        xb = hed_jitter(xb, float(cfg.stain_augment), g)
    x = runtime.normalize(xb, IMAGENET_MEAN, IMAGENET_STD)
    return x.contiguous(memory_format=torch.channels_last) if fit.plan.channels_last else x


def _train_epoch(fit: _Fit) -> tuple[float, int]:
    """One epoch of ``passes`` shuffled passes -> (mean training loss, images seen)."""
    cfg, device, idx = fit.cfg, fit.plan.device, torch.from_numpy(np.asarray(fit.train, dtype=np.int64))
    y_t, pos_weight = torch.from_numpy(fit.y.astype(np.float32)), torch.tensor(fit.pos_weight, device=device)
    fit.model.train()
    perm = torch.cat([idx[torch.randperm(len(idx), generator=fit.gen)] for _ in range(fit.passes)])
    run_loss, seen = 0.0, 0
    for i in range(0, len(perm), cfg.batch_size):
        bi = perm[i : i + cfg.batch_size]
        if len(bi) < 2:  # BatchNorm needs more than one image
            continue
        x = _batch(fit, bi)
        with runtime.autocast(fit.plan):
            logits = fit.model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y_t[bi].to(device), pos_weight=pos_weight)
        fit.opt.zero_grad(set_to_none=True)
        loss.backward()
        fit.opt.step()
        fit.sched.step()
        run_loss += float(loss.detach()) * len(bi)
        seen += len(bi)
    return run_loss / max(1, seen), seen


def _val_loss(fit: _Fit) -> float:
    """The training objective (class-weighted BCE) on the validation images."""
    probs = predict_probs(fit.model, fit.images[torch.from_numpy(fit.val)], plan=fit.plan)
    yy = fit.y[fit.val].astype(np.float64)
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    w = np.where(yy == 1, fit.pos_weight, 1.0)
    return float(np.sum(w * -(yy * np.log(p) + (1 - yy) * np.log(1 - p))) / np.sum(w))


def _select(fit: _Fit, rec: dict[str, Any]) -> None:
    """Keep the best validation epoch's weights (without validation: the last epoch)."""
    st = fit.state
    if fit.val is None or not len(fit.val):
        st["best_epoch"] = st["epoch"]
        return
    rec["val_loss"] = vl = _val_loss(fit)
    if vl < st["best_loss"] - 1e-4:
        best = {k: v.detach().cpu().clone() for k, v in fit.model.state_dict().items()}
        st.update(best_loss=vl, best_epoch=st["epoch"], bad_epochs=0, best_state=best)
    else:
        st["bad_epochs"] += 1


def _report(desc: str, epochs: int, rec: dict[str, Any], seen: int, t_epoch: float) -> None:
    val = f", val loss {rec['val_loss']:.3f}" if "val_loss" in rec else ""
    speed = f", {seen / max(time.time() - t_epoch, 1e-9):.1f} images/s"
    live.report(f"fine-tune {desc} epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.3f}{val}{speed}")


def train_one(
    cfg, images, y, train, val, seed, plan, encoder=None, state_path=None, max_epochs=0, min_steps=None, desc="fit"
):
    """Train one model from ``cfg.init`` (``encoder``: the SSL encoder file of a glom run) on ``images[train]``;
    select the epoch on ``images[val]`` (without it: ``max_epochs`` epochs, last weights). ``y``: labels of every
    image. ``state_path``: per-epoch checkpoint for resuming. ``min_steps``: the step budget (default
    ``cfg.min_steps``, -1 counting as 0 here). -> (model with the selected weights, info: best_epoch, history...)."""
    t0 = time.time()
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    epochs, budget = int(max_epochs or cfg.epochs), cfg.min_steps if min_steps is None else min_steps
    fit, info = _start(cfg, images, y, train, val, plan, encoder, epochs, budget, seed, desc)
    if state_path is not None and state_path.exists():
        _load_state(fit, state_path)
    st = fit.state
    bar = tqdm(total=epochs, initial=st["epoch"], desc=desc, leave=False, disable=not cfg.progress)
    while st["epoch"] < epochs:
        t_epoch = time.time()
        train_loss, seen = _train_epoch(fit)
        st["epoch"] += 1
        rec = {"epoch": st["epoch"], "train_loss": train_loss}
        _select(fit, rec)
        st["history"].append(rec)
        _report(desc, epochs, rec, seen, t_epoch)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "epoch"})
        if state_path is not None:
            _save_state(fit, state_path)
        if val is not None and st["bad_epochs"] >= cfg.patience:
            break
    bar.close()
    if st["best_state"] is not None:
        fit.model.load_state_dict(st["best_state"])
    best_loss = float(st["best_loss"]) if math.isfinite(st["best_loss"]) else None
    info.update(best_epoch=int(st["best_epoch"]), epochs_run=int(st["epoch"]), best_val_loss=best_loss)
    n_val = 0 if val is None else int(len(val))
    return fit.model, {**info, "history": st["history"], "n_val": n_val, "seconds": round(time.time() - t0, 1)}
