"""SimCLR pretraining of a glomerulus encoder (notebook 02, ``glomlib ssl``).

One config (:class:`SSLConfig`, fields == notebook 02's parameters) drives :func:`run_ssl`, which

1. reads the manifest, fingerprints the data and loads the patches from the uint8 cache,
2. trains backbone + lightly's ``SimCLRProjectionHead`` with lightly's ``NTXentLoss`` on two augmented views
   per image (:mod:`glomlib.train.augment`: crop, flips, any-angle rotation, colour jitter, CLAHE, resize),
3. logs per epoch loss, images/s, learning rate and a collapse monitor (spread of the L2-normalised
   embeddings vs 1/sqrt(d), and kNN accuracy/AUC on labeled patches with slide-grouped folds) to
   ``history.csv``,
4. checkpoints every epoch atomically (``checkpoint.pt``, loadable with ``weights_only=True``; ``resume``
   continues after the last completed epoch with model, optimiser, scheduler and RNG state),
5. saves the backbone alone as ``encoder.safetensors`` for fine-tuning's ``init=glom``.

Devices: CPU (all cores, optional bf16 autocast) and CUDA (bf16 autocast where supported, channels_last,
pinned memory, data-loader workers). Several GPUs: launch the same command with
``torchrun --nproc_per_node=N -m glomlib.train.simclr ...``; negatives are gathered across ranks
(``NTXentLoss(gather_distributed=True)``), the data are sharded per rank, and the batch size is per rank.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glomlib.data.stain import STAIN_METHODS
from glomlib.train.augment import AugmentParams, apply_clahe, augment_batch
from glomlib.models.files import atomic_save, load_checkpoint, save_encoder
from glomlib.core.config import ConfigError, StepConfig, add_config_arguments, config_from_args
from glomlib.core import progress as live, runtime
from glomlib.core.io import write_csv_atomic
from glomlib.core.runtime import PRECISIONS, plan, rng_state, seed_everything, set_rng_state, warmup_cosine
from glomlib.models.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone

OPTIMIZERS = ("adamw", "lars", "sgd")
CHECKPOINT_NAME = "checkpoint.pt"
ENCODER_NAME = "encoder.safetensors"
HISTORY_NAME = "history.csv"


@dataclasses.dataclass
class SSLConfig(StepConfig):
    """Parameters of notebook 02 (SimCLR pretraining). Every field is a notebook parameter."""

    data: str = "data/glomeruli-pas/manifest.csv"  # manifest CSV (labels optional; used only for the kNN monitor)
    out: str = "auto"                    # run folder; "auto" = runs/<UTC stamp>-ssl
    backbone: str = "efficientnet_lite0"  # resnet18 | resnet50 | efficientnet_lite0 (offline ImageNet weights)
    ssl_init: str = "imagenet"           # scratch | imagenet (domain-adaptive continued pretraining)
    image_size: int = 96                 # pixels (the study used 512)
    epochs: int = 10                     # passes over all patches
    batch_size: int = 64                 # patches per step, per process (per GPU under torchrun)
    lr: float = 5e-05                    # peak learning rate after warm-up (5e-5 measured for continued pretraining)
    optimizer: str = "adamw"             # adamw | lars | sgd
    weight_decay: float = 1e-4           # L2 penalty (not on biases / norm layers)
    momentum: float = 0.9                # sgd / lars only
    warmup_epochs: int = 1               # linear warm-up (at most half of all steps), then cosine decay to 0
    temperature: float = 0.2             # NT-Xent temperature
    freeze_bn: bool = True               # keep the backbone's BatchNorm statistics frozen (eval mode) while training
    bn_recalibrate: bool = True          # re-estimate BatchNorm statistics on clean images before saving/monitoring
    proj_hidden_dim: int = 512           # projection head width (discarded after pretraining)
    proj_out_dim: int = 128              # embedding size of the loss
    seed: int = 0                        # random seed
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    precision: str = "auto"              # auto (what this hardware runs fastest, see glomlib.core.runtime) | bf16 | fp32
    channels_last: bool = True          # memory layout of images and weights
    num_workers: int = 0                 # data-loader workers (CLAHE + batching); 0 = main process
    resume: bool = False                 # continue the run in `out` from its last completed epoch
    max_images: int = 0                  # use only the first N images (0 = all)
    exclude_centre: str = ""             # leave this centre's images out (an encoder for leave-one-centre-out glom fine-tunes); "" = all
    stain_normalize: str = ""            # "" (off) | reinhard | macenko: every image stain-normalised once, into the image cache (as in 03)
    steps_per_epoch: int = 0             # cap steps per epoch (0 = a full pass); for smoke tests/benchmarks
    positive_label: str = ""             # positive label of the kNN monitor ("" = the one dataset.json names)
    knn_every: int = 5                   # kNN monitor every N epochs (0 = off)
    knn_k: int = 20                      # neighbours of the kNN monitor
    folds: int = 5                       # slide-grouped folds of the kNN monitor and the final probe
    cache_dir: str = ""                  # image cache folder ("" = glomlib's default)
    final_probe: bool = True             # after training: linear probe of the encoder vs a random (and ImageNet) one
    progress: bool = True                # tqdm progress bars
    # augmentations (see glomlib.train.augment): probability 0 switches one off
    crop_p: float = 1.0                  # probability of a random resized crop
    crop_scale_min: float = 0.35         # smallest crop (fraction of the area)
    crop_scale_max: float = 1.0          # largest crop
    hflip_p: float = 0.5                 # horizontal flip probability
    vflip_p: float = 0.5                 # vertical flip probability
    rotate_p: float = 1.0                # rotation probability
    rotate_degrees: float = 180.0        # max angle (180 = any angle)
    rotate_fill: str = "reflection"      # reflection | border | zeros
    jitter_p: float = 0.5                # colour jitter probability
    brightness: float = 0.2              # colour jitter strength
    contrast: float = 0.2                # colour jitter strength
    saturation: float = 0.1              # colour jitter strength
    hue: float = 0.0                     # 0..0.5 (stain hue shift)
    grayscale_p: float = 0.0             # grayscale probability
    blur_p: float = 0.0                  # gaussian blur probability
    clahe_p: float = 0.2                 # CLAHE probability (OpenCV)
    clahe_clip: float = 2.0              # CLAHE clip limit
    clahe_grid: int = 8                  # CLAHE tiles per side
    stain_augment: float = 0.0           # HED (optical-density) stain jitter strength; 0 = off, 0.05 typical

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone={self.backbone!r}; choose one of {list(BACKBONES)}.")
        if self.ssl_init not in ("scratch", "imagenet"):
            raise ConfigError(f"ssl_init={self.ssl_init!r}; choose 'scratch' or 'imagenet'.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}; choose one of {list(OPTIMIZERS)}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; choose one of {list(PRECISIONS)}.")
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (SimCLR needs negatives in the batch).")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("lr and temperature must be > 0.")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must be >= 0.")
        if self.stain_normalize not in STAIN_METHODS:
            raise ConfigError(f"stain_normalize={self.stain_normalize!r}: choose one of {list(STAIN_METHODS)} ('' = off).")
        if self.resume and self.out in ("", "auto"):
            raise ConfigError("resume=True needs out=<the run folder to continue>.")
        try:
            self.augment_params().validate()
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def augment_params(self) -> AugmentParams:
        return AugmentParams.from_config(self.__dict__)


# ------------------------------------------------------------------------------------------ the model
class SimCLR(nn.Module):
    """Backbone + lightly's SimCLR projection head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def build_model(cfg: SSLConfig) -> SimCLR:
    backbone, dim = build_backbone(cfg.backbone, init=cfg.ssl_init)
    return SimCLR(backbone, dim, cfg.proj_hidden_dim, cfg.proj_out_dim)


def simclr_loss(model: nn.Module, criterion: nn.Module, v0: torch.Tensor, v1: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent loss of two view batches; both views go through the model in one forward pass.

    Returns ``(loss, z0)`` (``z0``: the projections of view 0, for the collapse monitor).
    """
    z = model(torch.cat([v0, v1]))
    z0, z1 = z.float().chunk(2)
    with torch.autocast(device_type=z.device.type, enabled=False):  # the loss in float32 even under bf16
        loss = criterion(z0, z1)
    return loss, z0.detach()


def set_backbone_bn_eval(model: SimCLR) -> None:
    """Put the backbone's BatchNorm layers in eval mode (running statistics frozen, affine still trained)."""
    for m in model.backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def recalibrate_bn(backbone: nn.Module, images: Any, image_size: int, device, batch_size: int = 128,
                   channels_last: bool = False, max_images: int = 2048) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var on clean (un-augmented) images, in place.

    During SimCLR the running statistics track *augmented* views (colour jitter, crops, CLAHE); downstream
    uses clean patches, so statistics of clean patches fit better (on glomeruli-pas this alone moved a
    frozen-feature probe from 0.946 to 0.974 AUC). Returns the backbone in eval mode.
    """
    from glomlib.models.backbones import to_tensor_batch

    backbone = revert_sync_batchnorm(backbone)  # SyncBN would wait for the other ranks
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return backbone.eval()
    saved = [(m.momentum,) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    backbone.train()
    idx = np.arange(len(images))
    if len(idx) > max_images:  # a fixed random subset
        idx = np.sort(np.random.default_rng(0).choice(len(idx), max_images, replace=False))
    for part in np.array_split(idx, max(1, math.ceil(len(idx) / batch_size))):  # no batch of 1
        x = to_tensor_batch(np.asarray(images[part]), device=device, channels_last=channels_last)
        if x.shape[-1] != image_size:
            x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
        backbone(x)
    for m, (mom,) in zip(bns, saved):
        m.momentum = mom
    return backbone.eval()


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace SyncBatchNorm layers (DDP on GPUs) by plain BatchNorm2d with the same state, recursively."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats).to(next(module.buffers()).device)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in list(module.named_children()):
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def embedding_spread(z: torch.Tensor) -> float:
    """Std over the batch of L2-normalised embeddings, averaged over dimensions; ~1/sqrt(d) when healthy,
    -> 0 when the embeddings collapse to one point."""
    zn = nn.functional.normalize(z.float(), dim=1)
    return float(zn.std(dim=0).mean())


# ------------------------------------------------------------------------------------ optimiser/schedule
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay (and, for LARS, no layer-wise adaptation) for biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_steps(warmup_epochs: int, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up steps: ``warmup_epochs`` epochs, but at most half of all steps (so a short run, e.g.
    ``--epochs 1``, still decays its learning rate)."""
    return min(int(warmup_epochs) * int(steps_per_epoch), int(total_steps) // 2)


def build_training(cfg: SSLConfig, device: Any, channels_last: bool, distributed: bool = False
                   ) -> tuple[SimCLR, torch.optim.Optimizer, nn.Module]:
    """The model (on ``device``, in its memory format), optimiser and NT-Xent loss of a SimCLR run: one set-up
    for :func:`pretrain` and the benchmarks (seed torch first for reproducible initial weights)."""
    from lightly.loss import NTXentLoss

    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(cfg, model), NTXentLoss(temperature=cfg.temperature, gather_distributed=distributed)


def build_optimizer(cfg: SSLConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    from lightly.utils.lars import LARS

    return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)


# ---------------------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> bool:
    """``init_process_group`` when launched by torchrun with WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    ``$GLOMLIB_DDP=1`` under torchrun initialises it even for one process (DDP, SyncBatchNorm and NCCL exercised
    on a single GPU, as ``benchmarks/gpu_check.py`` does)."""
    import torch.distributed as dist

    _, world, _ = dist_info()
    one = world == 1 and os.environ.get("GLOMLIB_DDP") == "1" and "MASTER_ADDR" in os.environ
    if (world <= 1 and not one) or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def _process_group() -> str:
    """The torch.distributed backend of this run ('' when no process group is initialised)."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else ""


def _is_main() -> bool:
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank() == 0
    return dist_info()[0] == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _broadcast_str(s: str) -> str:
    import torch.distributed as dist

    if not dist.is_initialized():
        return s
    obj = [s]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


# -------------------------------------------------------------------------------------------- data
def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  max_steps: int = 0) -> list[np.ndarray]:
    """This rank's index batches for one epoch: a seeded permutation (same on all ranks), truncated to a
    whole number of global batches, sharded round-robin like DistributedSampler."""
    g = np.random.default_rng([seed, epoch])
    perm = g.permutation(n)
    global_bs = batch_size * world
    steps = n // global_bs
    if steps == 0:
        raise ConfigError(f"batch_size={batch_size} x {world} process(es) is larger than the {n} images; "
                          "lower batch_size.")
    if max_steps:
        steps = min(steps, max_steps)
    perm = perm[: steps * global_bs]
    mine = perm[rank::world]
    return [np.sort(mine[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]


class PairSource(torch.utils.data.Dataset):
    """Given (epoch, step, indices), return the two uint8 NHWC source batches of the two views (CLAHE
    applied independently per view with probability ``clahe_p``; deterministic in (seed, epoch, step))."""

    def __init__(self, images: Any, params: AugmentParams, seed: int, rank: int = 0):
        self.images, self.params, self.seed, self.rank = images, params, seed, rank

    def __len__(self) -> int:  # pragma: no cover - sampler drives it
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step, idx = key
        b = np.ascontiguousarray(self.images[idx])  # one fancy-index read from the memmap
        p = self.params
        if p.clahe_p > 0:
            rng = np.random.default_rng([self.seed, epoch, step, self.rank, 7])
            v0 = apply_clahe(b, p.clahe_p, p.clahe_clip, p.clahe_grid, rng)
            v1 = apply_clahe(b, p.clahe_p, p.clahe_clip, p.clahe_grid, rng)
        else:
            v0 = v1 = np.array(b)
        return torch.from_numpy(v0), torch.from_numpy(v1)


def _worker_init(_: int) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass
    torch.set_num_threads(1)


def make_loader(source: PairSource, batches: list[np.ndarray], epoch: int, num_workers: int, pin: bool):
    keys = [(epoch, i, b) for i, b in enumerate(batches)]
    return torch.utils.data.DataLoader(
        source, sampler=keys, batch_size=None, num_workers=num_workers, pin_memory=pin,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None, persistent_workers=False,
    )


# ----------------------------------------------------------------------------------------- history
HISTORY_FIELDS = ["epoch", "loss", "lr", "images_per_s", "epoch_s", "embedding_std", "embedding_std_ref",
                  "feature_std", "knn_acc", "knn_auc"]


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    write_csv_atomic(pd.DataFrame(rows, columns=HISTORY_FIELDS), path)


def read_history(run_dir: str | Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / HISTORY_NAME)


# ------------------------------------------------------------------------------------------- training
def ssl_workload(cfg: SSLConfig) -> runtime.Workload:
    """This config's SimCLR step, for the runtime's timed precision calibration (both views in one batch)."""
    return runtime.Workload(f"simclr-{cfg.backbone}", cfg.image_size, 2 * cfg.batch_size,
                            lambda: build_model(dataclasses.replace(cfg, ssl_init="scratch")))


def ssl_plan(cfg: SSLConfig, local_rank: int = 0) -> runtime.Plan:
    """The runtime plan of a SimCLR run (``channels_last=False`` in the config switches the memory format off)."""
    p = plan(cfg.device, cfg.precision, local_rank=local_rank, workload=ssl_workload(cfg))
    if not cfg.channels_last and p.channels_last:
        p = dataclasses.replace(p, channels_last=False, reason=p.reason + "; channels_last=False in the config")
    return p


def train_step(model: nn.Module, criterion: nn.Module, opt: torch.optim.Optimizer, sched: Any,
               s0: Any, s1: Any, params: AugmentParams, g: torch.Generator, p: runtime.Plan
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SimCLR step on two uint8 NHWC source batches under the runtime plan ``p``: augment on its device
    (in its memory format), forward (bf16 autocast when it says bf16), NT-Xent in float32, backward, optimiser
    and scheduler step. Returns ``(loss, z0)``."""
    v0 = augment_batch(s0, params, g, device=p.device, channels_last=p.channels_last)
    v1 = augment_batch(s1, params, g, device=p.device, channels_last=p.channels_last)
    with runtime.autocast(p):
        loss, z0 = simclr_loss(model, criterion, v0, v1)
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


def _versions() -> dict[str, Any]:
    from glomlib.core.io import software_versions

    return software_versions()


def _knn_monitor(backbone: nn.Module, images: Any, y: np.ndarray, folds: np.ndarray, mon_plan: runtime.Plan,
                 k: int, recal_size: int | None = None) -> dict[str, float]:
    import copy

    from glomlib.evaluate.probe import knn_cv
    from glomlib.models.inference import extract_features

    backbone = revert_sync_batchnorm(copy.deepcopy(backbone))
    if recal_size:
        backbone = recalibrate_bn(backbone, images, recal_size, mon_plan.device)
    lab = np.nonzero(y >= 0)[0]
    feats = extract_features(backbone, _Rows(images, lab), batch_size=128, plan=mon_plan)
    r = knn_cv(feats, y[lab], folds[lab], k=k)
    r["feature_std"] = embedding_spread(torch.from_numpy(feats))
    return r


class _Rows:
    """Lazy row selection of an array-like (avoids copying a memmap)."""

    def __init__(self, arr: Any, idx: np.ndarray):
        self.arr, self.idx = arr, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.asarray(self.arr[self.idx[s]]) if len(self.idx[s]) else self.arr[:0]


def pretrain(cfg: SSLConfig, images: Any, run_dir: str | Path, *, y: np.ndarray | None = None,
             folds: np.ndarray | None = None, data_fingerprint: str | None = None,
             progress: bool = True) -> SSLResult:
    """SimCLR on ``images`` (uint8 NHWC array-like, e.g. the cache memmap) writing into ``run_dir``.

    ``y`` (1/0/-1 per image) and ``folds`` (fold per image, slide-grouped) enable the kNN monitor.
    ``run_dir`` must exist; with ``cfg.resume`` its ``checkpoint.pt`` (if any) is continued.
    Works unchanged under torchrun (each rank passes the same images).
    """
    from tqdm.auto import tqdm

    t_start = time.time()
    run_dir = Path(run_dir)
    rank, world, local_rank = dist_info()
    run_plan = ssl_plan(cfg, local_rank)
    device = run_plan.device
    distributed = init_distributed(device)
    if distributed:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    channels_last = run_plan.channels_last
    params = cfg.augment_params()
    n = len(images) if not cfg.max_images else min(cfg.max_images, len(images))
    if n < 2:
        raise ConfigError(f"SSL needs at least 2 images; got {n}.")

    seed_everything(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, opt, criterion = build_training(cfg, device, channels_last, distributed=distributed)
    batches0 = epoch_batches(n, cfg.batch_size, 0, cfg.seed, rank, world, cfg.steps_per_epoch)
    steps_per_epoch = len(batches0)
    total_steps = steps_per_epoch * cfg.epochs
    sched = warmup_cosine(opt, total_steps, warmup_steps(cfg.warmup_epochs, steps_per_epoch, total_steps))

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = run_dir / CHECKPOINT_NAME
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location="cpu")
        for key in ("backbone", "image_size", "proj_hidden_dim", "proj_out_dim", "optimizer"):
            if ck["config"].get(key) != getattr(cfg, key):
                raise ConfigError(f"Cannot resume {ckpt_path}: it was trained with {key}="
                                  f"{ck['config'].get(key)!r}, the config now says {getattr(cfg, key)!r}.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch = int(ck["epoch"])
        history = list(ck.get("history", []))
        set_rng_state(ck["rng"])
        if _is_main():
            print(f"Resuming {run_dir} after epoch {start_epoch}/{cfg.epochs}", flush=True)

    ddp_model: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":
            ddp_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ddp_model = DDP(ddp_model, device_ids=[device.index])
        else:
            ddp_model = DDP(model)

    source = PairSource(images, params, cfg.seed, rank)
    pin = device.type == "cuda"
    monitor = y is not None and folds is not None and cfg.knn_every > 0 and (np.asarray(y) >= 0).sum() >= 4
    d_ref = 1.0 / math.sqrt(cfg.proj_out_dim)

    t_loop = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        ddp_model.train()
        if cfg.freeze_bn:
            set_backbone_bn_eval(model)
        batches = epoch_batches(n, cfg.batch_size, epoch, cfg.seed, rank, world, cfg.steps_per_epoch)
        loader = make_loader(source, batches, epoch, cfg.num_workers, pin)
        t0 = time.time()
        loss_sum, spread_sum, seen = 0.0, 0.0, 0
        bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and _is_main()), dynamic_ncols=True)
        for step, (s0, s1) in enumerate(bar):
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, step, rank])
                                                  .generate_state(1, np.uint64)[0] % 2**63))
            loss, z0 = train_step(ddp_model, criterion, opt, sched, s0, s1, params, g, run_plan)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"SSL loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                                         "lower lr or use precision='fp32'.")
            loss_sum += float(loss.detach())
            spread_sum += embedding_spread(z0)
            seen += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_s = time.time() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "lr": opt.param_groups[0]["lr"],
            "images_per_s": seen * cfg.batch_size * world / max(epoch_s, 1e-9),
            "epoch_s": epoch_s,
            "embedding_std": spread_sum / max(seen, 1),
            "embedding_std_ref": d_ref,
        }
        if distributed:  # average the loss over ranks for the log
            import torch.distributed as dist

            t = torch.tensor([row["loss"]], device=device)
            dist.all_reduce(t)
            row["loss"] = float(t) / world
        if _is_main() and monitor and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            row.update(_knn_monitor(model.backbone, images, np.asarray(y), np.asarray(folds), run_plan,
                                    cfg.knn_k,
                                    cfg.image_size if cfg.bn_recalibrate and not cfg.freeze_bn else None))
        history.append(row)
        if _is_main():
            live.report(f"SimCLR epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, "
                            f"{row['images_per_s']:.1f} images/s ({run_plan.precision}), "
                            + live.time_left(epoch + 1 - start_epoch, cfg.epochs - start_epoch,
                                                 time.time() - t_loop))
            ck = {
                "format": "glomlib-ssl-checkpoint-v1",
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "rng": rng_state(),
                "config": cfg.to_dict(),
                "data_fingerprint": data_fingerprint or "",
                "versions": {k: ("" if v is None else str(v)) for k, v in _versions().items()},
                "history": history,
            }
            atomic_save(ck, ckpt_path)
            write_history(run_dir / HISTORY_NAME, history)
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            print(msg, flush=True)
        _barrier()

    enc_path = run_dir / ENCODER_NAME
    if _is_main():
        last = history[-1] if history else {}
        import copy

        encoder = revert_sync_batchnorm(copy.deepcopy(model.backbone))
        if cfg.bn_recalibrate and not cfg.freeze_bn:
            encoder = recalibrate_bn(encoder, images, cfg.image_size, device, channels_last=channels_last)
        save_encoder(enc_path, encoder, {
            "backbone": cfg.backbone, "image_size": cfg.image_size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "data_fingerprint": data_fingerprint or "", "source": "glomlib.train.simclr SimCLR",
            "ssl_init": cfg.ssl_init, "epochs": cfg.epochs, "stain_normalize": cfg.stain_normalize,
            "exclude_centre": cfg.exclude_centre, "bn_recalibrated": bool(cfg.bn_recalibrate and not cfg.freeze_bn), "final_loss": last.get("loss"),
            "knn_auc": last.get("knn_auc"), "config": cfg.to_dict(),
        })
    _barrier()
    return SSLResult(run_dir, enc_path, history, time.time() - t_start)


# --------------------------------------------------------------------------------------- manifest level
# Config fields that may differ between an interrupted run and its resumption (they do not change the training).
RESUME_FREE_FIELDS = ("resume", "out", "device", "num_workers", "progress", "cache_dir", "final_probe")


def resume_hint(run_dir: str | Path) -> str:
    return f"glomlib ssl --out {run_dir} --resume true (with the same data and parameters)"


def prepare_run_dir(cfg: SSLConfig, fingerprint: str | None = None) -> Path:
    """The run folder: new for out='auto'; an existing ``out`` only with resume=True, and only when that run is
    unfinished and was made from the same data (``fingerprint``) and training settings (else ResumeError)."""
    from glomlib.core.paths import DEFAULT_RUNS_ROOT
    from glomlib.core.io import ensure_new_dir, new_run_dir, open_for_resume

    if _is_main():
        if cfg.out in ("", "auto"):
            d = new_run_dir(DEFAULT_RUNS_ROOT, "ssl")
        elif cfg.resume:
            d = open_for_resume(cfg.out, cfg.to_dict(), fingerprint, free_fields=RESUME_FREE_FIELDS,
                                finished=(ENCODER_NAME,), command="e.g. --out auto")
        else:
            d = ensure_new_dir(cfg.out)
        path = str(d)
    else:
        path = ""
    return Path(_broadcast_str(path))


def load_data(cfg: SSLConfig) -> dict[str, Any]:
    """Manifest -> images (uint8 cache memmap), y, slide-grouped folds, fingerprint."""
    from glomlib.data.cache import load_images
    from glomlib.data.manifest import data_fingerprint, read_manifest

    if cfg.data == SSLConfig.data and not Path(cfg.data).exists():
        from glomlib.data.public import ensure_default_manifest

        ensure_default_manifest(cfg.data)
    df = read_manifest(cfg.data, positive_label=cfg.positive_label, require_labels=False)
    if cfg.exclude_centre:
        centres = sorted(set(df["center"].astype(str).str.strip())) if "center" in df.columns else []
        if cfg.exclude_centre not in centres:
            raise ConfigError(f"exclude_centre={cfg.exclude_centre!r} is not a centre of {cfg.data}; its centres "
                              f"(the 'center' column) are {centres}.")
        df = df[df["center"].astype(str).str.strip() != cfg.exclude_centre].reset_index(drop=True)
    if cfg.max_images:
        df = df.iloc[: cfg.max_images].reset_index(drop=True)
    fp = data_fingerprint(df)
    hashes = df["sha256"].tolist() if "sha256" in df.columns else None
    # stain-normalised once, when the cache entry is built: every epoch then reads plain uint8 rows
    images = load_images(df["path"].tolist(), cfg.image_size, cache_dir=cfg.cache_dir or None, hashes=hashes,
                         stain=cfg.stain_normalize)
    y = df["y"].to_numpy().astype(int)
    folds = np.full(len(df), -1, dtype=int)
    lab = y >= 0
    if lab.sum() >= 4 and len(np.unique(y[lab])) == 2:
        try:
            from glomlib.data.splits import assign_folds

            folds[lab] = assign_folds(df[lab].reset_index(drop=True), n_folds=cfg.folds, seed=cfg.seed)
        except Exception as e:  # too few slides for the monitor: it is only a monitor
            print(f"kNN monitor off: {e}", file=sys.stderr)
            folds[:] = -1
    return {"df": df, "images": images, "y": y, "folds": folds, "fingerprint": fp}


def run_ssl(cfg: SSLConfig, progress: bool | None = None, *, data: dict[str, Any] | None = None,
            run_dir: str | Path | None = None) -> SSLResult:
    """The whole step: data -> run folder (config.json, provenance.json) -> :func:`pretrain` -> probe.json.

    ``data`` (from :func:`load_data`) and ``run_dir`` (from :func:`prepare_run_dir`) may be given when the
    caller (notebook 02) already has them. ``progress``: tqdm bars (default ``cfg.progress``).
    The run folder's ``run.json`` says running / finished / failed (with how to resume or start again).
    """
    from glomlib.core.io import run_status

    with run_status("ssl", resume_hint):
        return _run_ssl(cfg, progress, data=data, run_dir=run_dir)


def _run_ssl(cfg: SSLConfig, progress: bool | None = None, *, data: dict[str, Any] | None = None,
             run_dir: str | Path | None = None) -> SSLResult:
    progress = cfg.progress if progress is None else progress
    from glomlib.core.io import open_for_resume, track_run, write_json_atomic, write_provenance

    init_distributed(runtime.resolve_device(cfg.device, dist_info()[2]))  # before any rank-0-only work
    data = data if data is not None else load_data(cfg)
    if run_dir is None:
        run_dir = prepare_run_dir(cfg, data["fingerprint"])
    elif cfg.resume and _is_main():  # a folder opened earlier (notebook 02): check it against the data read now
        open_for_resume(run_dir, cfg.to_dict(), data["fingerprint"], free_fields=RESUME_FREE_FIELDS,
                        finished=(ENCODER_NAME,), command="e.g. out='auto'")
    run_dir = Path(run_dir)
    if _is_main():
        track_run(run_dir)
        extra = {"n_images": int(len(data["images"])), "world_size": dist_info()[1],
                 "runtime": ssl_plan(cfg, dist_info()[2]).to_dict(), "process_group": _process_group()}
        if cfg.resume and (run_dir / "provenance.json").exists():  # provenance.json is written once, never again
            import datetime as _dt

            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            from glomlib.core.io import git_commit, software_versions

            write_json_atomic(run_dir / f"provenance-resumed-{stamp}.json",
                              {"config": cfg.to_dict(), "data_fingerprint": data["fingerprint"],
                               "git_commit": git_commit(), "versions": software_versions(), **extra})
        else:
            cfg.save(run_dir / "config.json")
            write_provenance(run_dir, cfg, data["fingerprint"], extra=extra)
    res = pretrain(cfg, data["images"], run_dir, y=data["y"], folds=data["folds"],
                   data_fingerprint=data["fingerprint"], progress=progress)
    if _is_main() and cfg.final_probe and (data["folds"] >= 0).any():
        write_json_atomic(run_dir / "probe.json", final_probe(cfg, data, res.encoder_path))
    return res


def final_probe(cfg: SSLConfig, data: dict[str, Any], encoder_path: str | Path) -> dict[str, Any]:
    """Slide-grouped linear probe (and kNN) of frozen features: this run's encoder vs a randomly initialised
    encoder of the same architecture, and vs ImageNet weights when they are available offline."""
    from glomlib.models.files import load_encoder_into
    from glomlib.models.backbones import WeightsNotFoundError
    from glomlib.evaluate.probe import knn_cv, linear_probe_cv
    from glomlib.models.inference import extract_features

    y, folds = np.asarray(data["y"]), np.asarray(data["folds"])
    lab = np.nonzero((y >= 0) & (folds >= 0))[0]
    imgs = data["images"][lab] if len(lab) < len(y) else data["images"]
    out: dict[str, Any] = {"image_size": cfg.image_size, "backbone": cfg.backbone, "n": int(len(lab))}
    probe_plan = ssl_plan(cfg)  # the same runtime plan for all three encoders
    for name in ("glom", "random", "imagenet"):
        torch.manual_seed(cfg.seed)
        try:
            bb, _ = build_backbone(cfg.backbone, init="imagenet" if name == "imagenet" else "scratch")
        except WeightsNotFoundError:
            continue
        if name == "glom":
            load_encoder_into(bb, encoder_path, expect_backbone=cfg.backbone)
        f = extract_features(bb, imgs, batch_size=128, plan=probe_plan)
        r = linear_probe_cv(f, y[lab], folds[lab])
        r.update(knn_cv(f, y[lab], folds[lab], k=cfg.knn_k))
        out[name] = r
    return out


def probe_table(probe: dict[str, Any]):
    """probe.json -> a small DataFrame (rows: glom / random / imagenet)."""
    import pandas as pd

    rows = [{"encoder": k, "linear-probe AUC": v["auc_mean"], "± (folds)": v["auc_std"], "kNN AUC": v["knn_auc"],
             "kNN accuracy": v["knn_acc"]} for k, v in probe.items() if isinstance(v, dict)]
    return pd.DataFrame(rows).set_index("encoder").round(3)


# ------------------------------------------------------------------------------------------- figures
def plot_view_pairs(images: Any, params: AugmentParams, n: int = 6, seed: int = 0, save: str | Path | None = None):
    """A figure: n original patches (top) and two augmented views of each (rows 2-3)."""
    import matplotlib.pyplot as plt

    from glomlib.train.augment import denormalize, two_views

    idx = np.sort(np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False))
    src = np.asarray(images[idx])
    v0, v1 = two_views(src, params, torch.Generator().manual_seed(seed), rng=np.random.default_rng(seed))
    v0, v1 = denormalize(v0), denormalize(v1)
    fig, axes = plt.subplots(3, len(idx), figsize=(2 * len(idx), 6.3), squeeze=False)
    for j in range(len(idx)):
        for i, im in enumerate((src[j], v0[j].permute(1, 2, 0).numpy(), v1[j].permute(1, 2, 0).numpy())):
            axes[i, j].imshow(im)
            axes[i, j].axis("off")
    for i, t in enumerate(("patch", "view 1", "view 2")):
        axes[i, 0].set_title(t, loc="left", fontsize=10)
    fig.tight_layout()
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110, bbox_inches="tight")
    return fig


def plot_history(history: Any, save: str | Path | None = None):
    """Loss, learning rate, throughput and the collapse monitor per epoch (from history.csv)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    h = history if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
    ax[0].plot(h["epoch"], h["loss"], marker="o")
    ax[0].set(title="NT-Xent loss", xlabel="epoch")
    ax[1].plot(h["epoch"], h["lr"], marker=".")
    ax[1].set(title="learning rate", xlabel="epoch")
    ax[2].plot(h["epoch"], h["images_per_s"], marker=".")
    ax[2].set(title="images / s", xlabel="epoch")
    ax[3].plot(h["epoch"], h["embedding_std"], marker="o", label="std of normalised embeddings")
    ax[3].axhline(float(h["embedding_std_ref"].iloc[0]), ls="--", c="gray", label="1/sqrt(d) (healthy)")
    ax[3].set(title="collapse monitor", xlabel="epoch", ylim=(0, None))
    if "knn_auc" in h and h["knn_auc"].notna().any():
        k = h.dropna(subset=["knn_auc"])
        a2 = ax[3].twinx()
        a2.plot(k["epoch"], k["knn_auc"], marker="s", c="C3", label="kNN AUC")
        a2.set_ylim(0.5, 1.0)
        a2.set_ylabel("kNN AUC (labeled patches, slide-grouped)", color="C3")
    ax[3].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110, bbox_inches="tight")
    return fig


# ------------------------------------------------------------------------------------------------ CLI
def _cli(args: argparse.Namespace) -> int:
    res = run_ssl(config_from_args(SSLConfig, args))
    if _is_main():
        print(f"encoder: {res.encoder_path}  ({res.wall_s:.0f} s)")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SSLConfig)
    p.set_defaults(func=_cli)


def register(subparsers) -> None:
    p = subparsers.add_parser("ssl", help="SimCLR pretraining (notebook 02's step)",
                              description=__doc__.splitlines()[0])
    _add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m glomlib.train.simclr`` (what torchrun launches): the same options as ``glomlib ssl``."""
    p = argparse.ArgumentParser(prog="python -m glomlib.train.simclr", description=__doc__.splitlines()[0])
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
