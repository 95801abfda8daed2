"""The SimCLR training loop: :func:`pretrain` (epochs, kNN monitor, checkpoints, resume, the saved encoder)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from glomlib.core import progress as live
from glomlib.core import runtime
from glomlib.core.config import ConfigError
from glomlib.core.io import software_versions
from glomlib.models import files
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from glomlib.train.augment import AugmentParams, augment_batch
from glomlib.train.schedule import warmup_cosine
from glomlib.train.simclr import dist as D
from glomlib.train.simclr import model as M
from glomlib.train.simclr.config import CHECKPOINT_NAME, ENCODER_NAME, HISTORY_NAME, SSLConfig
from glomlib.train.simclr.data import PairSource, epoch_batches, make_loader, write_history

ENCODER_META = "backbone image_size ssl_init epochs stain_normalize exclude_centre".split()


def ssl_workload(cfg: SSLConfig) -> runtime.Workload:
    """This config's SimCLR step, for the runtime's timed precision calibration (both views in one batch)."""
    build = lambda: M.build_model(dataclasses.replace(cfg, ssl_init="scratch"))  # noqa: E731
    return runtime.Workload(f"simclr-{cfg.backbone}", cfg.image_size, 2 * cfg.batch_size, build)


def ssl_plan(cfg: SSLConfig, local_rank: int = 0) -> runtime.Plan:
    """The runtime plan of a SimCLR run (``channels_last=False`` in the config switches the memory format off)."""
    p = runtime.plan(cfg.device, cfg.precision, local_rank=local_rank, workload=ssl_workload(cfg))
    if not cfg.channels_last and p.channels_last:
        p = dataclasses.replace(p, channels_last=False, reason=p.reason + "; channels_last=False in the config")
    return p


def train_step(model, criterion, opt, sched, s0, s1, params: AugmentParams, g: torch.Generator, p: runtime.Plan):
    """One SimCLR step on two uint8 NHWC source batches under the plan ``p``: augment on its device, forward
    (bf16 autocast when it says so), NT-Xent in float32, backward, optimiser and scheduler step -> (loss, z0)."""
    v0 = augment_batch(s0, params, g, device=p.device, channels_last=p.channels_last)
    v1 = augment_batch(s1, params, g, device=p.device, channels_last=p.channels_last)
    with runtime.autocast(p):
        loss, z0 = M.simclr_loss(model, criterion, v0, v1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss.detach(), z0


@dataclasses.dataclass
class SSLResult:
    run_dir: Path
    encoder_path: Path
    history: list[dict[str, Any]]
    wall_s: float


class _Rows:
    """Lazy row selection of an array-like (avoids copying a memmap)."""

    def __init__(self, arr: Any, idx: np.ndarray):
        self.arr, self.idx = arr, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.asarray(self.arr[self.idx[s]]) if len(self.idx[s]) else self.arr[:0]


def _knn_monitor(backbone, images, y: np.ndarray, folds: np.ndarray, plan: runtime.Plan, k: int, recal_size=None):
    from glomlib.evaluate.probe import knn_cv
    from glomlib.models.inference import extract_features

    backbone = M.revert_sync_batchnorm(copy.deepcopy(backbone))
    if recal_size:
        backbone = M.recalibrate_bn(backbone, images, recal_size, plan.device)
    lab = np.nonzero(y >= 0)[0]
    feats = extract_features(backbone, _Rows(images, lab), batch_size=128, plan=plan)
    return {**knn_cv(feats, y[lab], folds[lab], k=k), "feature_std": M.embedding_spread(torch.from_numpy(feats))}


@dataclasses.dataclass
class _Run:
    """What one pretraining run holds between its steps."""

    cfg: SSLConfig
    plan: runtime.Plan
    rank: int
    world: int
    distributed: bool
    n: int
    model: nn.Module
    opt: torch.optim.Optimizer
    criterion: nn.Module
    sched: Any
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0


def _setup(cfg: SSLConfig, images: Any) -> _Run:
    rank, world, local_rank = D.dist_info()
    plan = ssl_plan(cfg, local_rank)
    distributed = D.init_distributed(plan.device)
    if distributed:
        rank, world = D.rank_and_world()
    n = len(images) if not cfg.max_images else min(cfg.max_images, len(images))
    if n < 2:
        raise ConfigError(f"SSL needs at least 2 images; got {n}.")
    runtime.seed_everything(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, opt, criterion = M.build_training(cfg, plan.device, plan.channels_last, distributed=distributed)
    steps_per_epoch = len(epoch_batches(n, cfg.batch_size, 0, cfg.seed, rank, world, cfg.steps_per_epoch))
    total = steps_per_epoch * cfg.epochs
    sched = warmup_cosine(opt, total, M.warmup_steps(cfg.warmup_epochs, steps_per_epoch, total))
    return _Run(cfg, plan, rank, world, distributed, n, model, opt, criterion, sched)


def _resume(run: _Run, ckpt_path: Path) -> None:
    """Continue after the last completed epoch of ``checkpoint.pt``: weights, optimiser, schedule, RNG, history."""
    cfg, ck = run.cfg, files.load_checkpoint(ckpt_path, map_location="cpu")
    for key in ("backbone", "image_size", "proj_hidden_dim", "proj_out_dim", "optimizer"):
        if ck["config"].get(key) != getattr(cfg, key):
            raise ConfigError(
                f"Cannot resume {ckpt_path}: it was trained with {key}="
                f"{ck['config'].get(key)!r}, the config now says {getattr(cfg, key)!r}."
            )
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    run.start_epoch, run.history = int(ck["epoch"]), list(ck.get("history", []))
    runtime.set_rng_state(ck["rng"])
    if D.is_main():
        print(f"Resuming {ckpt_path.parent} after epoch {run.start_epoch}/{cfg.epochs}", flush=True)


def _ddp(run: _Run) -> nn.Module:
    if not run.distributed:
        return run.model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if run.plan.device.type == "cuda":
        return DDP(nn.SyncBatchNorm.convert_sync_batchnorm(run.model), device_ids=[run.plan.device.index])
    return DDP(run.model)


def _train_epoch(run: _Run, ddp_model: nn.Module, source: PairSource, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch -> its history row (loss averaged over ranks, images/s, learning rate, collapse monitor)."""
    cfg, device = run.cfg, run.plan.device
    ddp_model.train()
    if cfg.freeze_bn:
        M.set_backbone_bn_eval(run.model)
    batches = epoch_batches(run.n, cfg.batch_size, epoch, cfg.seed, run.rank, run.world, cfg.steps_per_epoch)
    loader = make_loader(source, batches, epoch, cfg.num_workers, device.type == "cuda")
    t0, loss_sum, spread_sum, seen = time.time(), 0.0, 0.0, 0
    show = progress and D.is_main()
    bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not show)
    for step, (s0, s1) in enumerate(bar):
        seq = np.random.SeedSequence([cfg.seed, epoch, step, run.rank])
        g = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] % 2**63))
        loss, z0 = train_step(ddp_model, run.criterion, run.opt, run.sched, s0, s1, source.params, g, run.plan)
        if not torch.isfinite(loss):
            where = f"at epoch {epoch + 1} step {step + 1}"
            raise FloatingPointError(f"SSL loss became {loss.item()} {where}; lower lr or use precision='fp32'.")
        loss_sum, spread_sum, seen = loss_sum + float(loss.detach()), spread_sum + M.embedding_spread(z0), seen + 1
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    epoch_s = time.time() - t0
    row = {"epoch": epoch + 1, "loss": D.mean_over_ranks(loss_sum / max(seen, 1), device)}
    row.update(lr=run.opt.param_groups[0]["lr"], images_per_s=seen * cfg.batch_size * run.world / max(epoch_s, 1e-9))
    row.update(epoch_s=epoch_s, embedding_std=spread_sum / max(seen, 1))
    return {**row, "embedding_std_ref": 1.0 / math.sqrt(cfg.proj_out_dim)}


def _recalibrates(cfg: SSLConfig) -> bool:
    return bool(cfg.bn_recalibrate and not cfg.freeze_bn)


def _save_checkpoint(run: _Run, run_dir: Path, epoch: int, fingerprint: str | None) -> None:
    ck = {"format": "glomlib-ssl-checkpoint-v1", "model": run.model.state_dict(), "optimizer": run.opt.state_dict()}
    ck.update(scheduler=run.sched.state_dict(), epoch=epoch + 1, rng=runtime.rng_state(), config=run.cfg.to_dict())
    versions = {k: ("" if v is None else str(v)) for k, v in software_versions().items()}
    ck.update(data_fingerprint=fingerprint or "", versions=versions, history=run.history)
    files.atomic_save(ck, run_dir / CHECKPOINT_NAME)
    write_history(run_dir / HISTORY_NAME, run.history)


def _log_epoch(run: _Run, row: dict[str, Any], t_loop: float) -> None:
    cfg, done = run.cfg, row["epoch"] - run.start_epoch
    left = live.time_left(done, cfg.epochs - run.start_epoch, time.time() - t_loop)
    speed = f"{row['images_per_s']:.1f} images/s ({run.plan.precision})"
    live.report(f"SimCLR epoch {row['epoch']}/{cfg.epochs}: loss {row['loss']:.4f}, {speed}, " + left)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def _save_encoder(run: _Run, images: Any, path: Path, fingerprint: str | None) -> None:
    """The backbone alone (BatchNorm re-estimated on clean images when asked), for fine-tuning's init=glom."""
    cfg, last = run.cfg, (run.history[-1] if run.history else {})
    encoder = M.revert_sync_batchnorm(copy.deepcopy(run.model.backbone))
    if _recalibrates(cfg):
        encoder = M.recalibrate_bn(
            encoder, images, cfg.image_size, run.plan.device, channels_last=run.plan.channels_last
        )
    meta = {k: getattr(cfg, k) for k in ENCODER_META[:2]}
    meta.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), data_fingerprint=fingerprint or "")
    meta.update(source="glomlib.train.simclr SimCLR", **{k: getattr(cfg, k) for k in ENCODER_META[2:]})
    meta.update(bn_recalibrated=_recalibrates(cfg), final_loss=last.get("loss"), knn_auc=last.get("knn_auc"))
    files.save_encoder(path, encoder, {**meta, "config": cfg.to_dict()})


def pretrain(cfg: SSLConfig, images, run_dir, *, y=None, folds=None, data_fingerprint=None, progress=True) -> SSLResult:
    """SimCLR on ``images`` (uint8 NHWC array-like, e.g. the cache memmap) writing into the existing ``run_dir``.

    ``y`` (1/0/-1 per image) and ``folds`` (slide-grouped) enable the kNN monitor; with ``cfg.resume`` the run
    folder's ``checkpoint.pt`` (if any) is continued. Works unchanged under torchrun (each rank passes the same
    images)."""
    t_start, run_dir = time.time(), Path(run_dir)
    run = _setup(cfg, images)
    if cfg.resume and (run_dir / CHECKPOINT_NAME).exists():
        _resume(run, run_dir / CHECKPOINT_NAME)
    ddp_model, source = _ddp(run), PairSource(images, cfg.augment_params(), cfg.seed, run.rank)
    monitor = y is not None and folds is not None and cfg.knn_every > 0 and (np.asarray(y) >= 0).sum() >= 4
    recal_size, t_loop = cfg.image_size if _recalibrates(cfg) else None, time.time()
    for epoch in range(run.start_epoch, cfg.epochs):
        row = _train_epoch(run, ddp_model, source, epoch, progress)
        if D.is_main() and monitor and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            yf = np.asarray(y), np.asarray(folds)
            row.update(_knn_monitor(run.model.backbone, images, *yf, run.plan, cfg.knn_k, recal_size))
        run.history.append(row)
        if D.is_main():
            _save_checkpoint(run, run_dir, epoch, data_fingerprint)
            _log_epoch(run, row, t_loop)
        D.barrier()
    enc_path = run_dir / ENCODER_NAME
    if D.is_main():
        _save_encoder(run, images, enc_path, data_fingerprint)
    D.barrier()
    return SSLResult(run_dir, enc_path, run.history, time.time() - t_start)
