"""SimCLR data.

The manifest's patches from the image cache, per-epoch index batches, the two-view loader, and
history.csv."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from glomlib.core.config import ConfigError
from glomlib.core.io import write_csv_atomic
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.train.augment import AugmentParams, apply_clahe
from glomlib.train.simclr.config import HISTORY_NAME, SSLConfig

HISTORY_FIELDS = (
    "epoch loss lr images_per_s epoch_s embedding_std embedding_std_ref feature_std knn_acc knn_auc".split()
)


def _select_rows(cfg: SSLConfig, df: pd.DataFrame) -> pd.DataFrame:
    if cfg.exclude_centre:
        centres = sorted(set(df["center"].astype(str).str.strip())) if "center" in df.columns else []
        if cfg.exclude_centre not in centres:
            raise ConfigError(
                f"exclude_centre={cfg.exclude_centre!r} is not a centre of {cfg.data}; its centres "
                f"(the 'center' column) are {centres}."
            )
        df = df[df["center"].astype(str).str.strip() != cfg.exclude_centre].reset_index(drop=True)
    return df.iloc[: cfg.max_images].reset_index(drop=True) if cfg.max_images else df


def _monitor_folds(cfg: SSLConfig, df: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """Slide-grouped folds of the labelled images for the kNN monitor (-1: unlabelled, or the monitor is off)."""
    from glomlib.data.splits import assign_folds

    folds = np.full(len(df), -1, dtype=int)
    lab = y >= 0
    if lab.sum() >= 4 and len(np.unique(y[lab])) == 2:
        try:
            folds[lab] = assign_folds(df[lab].reset_index(drop=True), n_folds=cfg.folds, seed=cfg.seed)
        except Exception as e:  # too few slides for the monitor: it is only a monitor
            print(f"kNN monitor off: {e}", file=sys.stderr)
            folds[:] = -1
    return folds


def load_data(cfg: SSLConfig) -> dict[str, Any]:
    """Manifest -> images (uint8 cache memmap, stain-normalised once when asked), y, slide-grouped folds,
    fingerprint."""
    from glomlib.data.cache import load_images
    from glomlib.data.manifest import data_fingerprint, read_manifest

    if Path(cfg.data) == DEFAULT_MANIFEST and not Path(cfg.data).exists():
        from glomlib.data.public import ensure_default_manifest

        ensure_default_manifest(cfg.data)
    df = _select_rows(cfg, read_manifest(cfg.data, positive_label=cfg.positive_label, require_labels=False))
    hashes = df["sha256"].tolist() if "sha256" in df.columns else None
    images = load_images(
        df["path"].tolist(), cfg.image_size, cache_dir=cfg.cache_dir or None, hashes=hashes, stain=cfg.stain_normalize
    )
    y = df["y"].to_numpy().astype(int)
    folds = _monitor_folds(cfg, df, y)
    return {"df": df, "images": images, "y": y, "folds": folds, "fingerprint": data_fingerprint(df)}


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1, max_steps: int = 0
) -> list[np.ndarray]:
    """This rank's index batches for one epoch: a seeded permutation (same on all ranks), truncated to a
    whole number of global batches, sharded round-robin like DistributedSampler."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // (batch_size * world)
    if steps == 0:
        raise ConfigError(
            f"batch_size={batch_size} x {world} process(es) is larger than the {n} images; lower batch_size."
        )
    if max_steps:
        steps = min(steps, max_steps)
    mine = perm[: steps * batch_size * world][rank::world]
    return [np.sort(mine[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]


class PairSource(torch.utils.data.Dataset):
    """(epoch, step, indices) -> the two uint8 NHWC source batches of the two views (CLAHE drawn independently
    per view with probability ``clahe_p``; deterministic in (seed, epoch, step, rank))."""

    def __init__(self, images: Any, params: AugmentParams, seed: int, rank: int = 0):
        self.images, self.params, self.seed, self.rank = images, params, seed, rank

    def __len__(self) -> int:  # pragma: no cover - sampler drives it
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step, idx = key
        b = np.ascontiguousarray(self.images[idx])  # one fancy-index read from the memmap
        p = self.params
        if p.clahe_p <= 0:
            v = torch.from_numpy(np.array(b))
            return v, v
        rng = np.random.default_rng([self.seed, epoch, step, self.rank, 7])
        v0 = apply_clahe(b, p.clahe_p, p.clahe_clip, p.clahe_grid, rng)
        return torch.from_numpy(v0), torch.from_numpy(apply_clahe(b, p.clahe_p, p.clahe_clip, p.clahe_grid, rng))


def _worker_init(_: int) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass
    torch.set_num_threads(1)


def make_loader(source: PairSource, batches: list[np.ndarray], epoch: int, num_workers: int, pin: bool):
    keys, workers = [(epoch, i, b) for i, b in enumerate(batches)], num_workers > 0
    init, prefetch = (_worker_init, 4) if workers else (None, None)
    kw = {"worker_init_fn": init, "prefetch_factor": prefetch, "persistent_workers": False}
    return torch.utils.data.DataLoader(
        source, sampler=keys, batch_size=None, num_workers=num_workers, pin_memory=pin, **kw
    )


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv_atomic(pd.DataFrame(rows, columns=HISTORY_FIELDS), path)


def read_history(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / HISTORY_NAME)
