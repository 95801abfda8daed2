"""One pass over the images: file hash, size, colour and stain statistics, sharpness, perceptual hashes, mask areas."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from glomlib.data.images import read_mask, read_rgb
from glomlib.review.audit.config import AuditConfig

OD_BINS = np.linspace(0.0, 1.5, 31)  # OD histogram bin edges (values above 1.5 land in the last bin)


CHANNELS = ("R", "G", "B")


# 8 dihedral transforms (identity, rotations, flips) used for rotation/flip-aware near-duplicate search
_DIHEDRAL = [None, 2, 3, 4, 0, 1, 5, 6]  # PIL.Image.Transpose values; None = identity


@dataclasses.dataclass
class ImageScan:
    """What one pass over the images yields.

    ``table``: one row per manifest row (same order) with file and pixel statistics;
    ``od_hist``: (N, 3, len(OD_BINS)-1) per-image OD histograms of tissue pixels (counts);
    ``phash``: (N, 8, 64) bool perceptual-hash bits of the 8 rotations/flips (index 0 = as stored).
    """

    table: pd.DataFrame
    od_hist: np.ndarray
    phash: np.ndarray


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD = -log10((I + 1) / 256) per channel, float32, same shape as ``rgb`` (uint8)."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a grey uint8 image: low = blurred / featureless."""
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _phash_bits(rgb: np.ndarray, dihedral: bool) -> np.ndarray:
    import imagehash
    from PIL import Image

    img, bits = Image.fromarray(rgb), np.zeros((8, 64), bool)
    for i, t in enumerate(_DIHEDRAL if dihedral else [None]):
        bits[i] = imagehash.phash(img if t is None else img.transpose(Image.Transpose(t)), hash_size=8).hash.ravel()
    if not dihedral:
        bits[1:] = bits[0]
    return bits


def _tissue(rgb: np.ndarray, white_level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background mask, OD, tissue mask): tissue = not background and some channel's OD above 0.15."""
    background = np.all(rgb >= white_level, axis=-1)
    od = optical_density(rgb)
    return background, od, ~background & (od.max(axis=-1) > 0.15)


def image_stats(rgb: np.ndarray, white_level: int = 215) -> dict[str, float]:
    """Colour, stain, background and sharpness statistics of one RGB uint8 image (already resized)."""
    background, od, tissue = _tissue(rgb, white_level)
    rec: dict[str, float] = {"background_frac": float(background.mean()), "tissue_frac": float(tissue.mean())}
    for c, name in enumerate(CHANNELS):
        rec[f"mean_{name}"] = float(rgb[..., c].mean())
        rec[f"std_{name}"] = float(rgb[..., c].std())
        rec[f"od_{name}"] = float(od[..., c][tissue].mean()) if tissue.any() else float("nan")
    rec["od_total"] = float(np.nansum([rec[f"od_{n}"] for n in CHANNELS])) if tissue.any() else float("nan")
    rec["blur_lapvar"] = laplacian_variance(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return rec


def _scan_one(path: str, cfg: AuditConfig, od_hist: np.ndarray, phash: np.ndarray) -> dict[str, Any]:
    from PIL import Image

    raw = Path(path).read_bytes()
    rec: dict[str, Any] = {"file_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    with Image.open(path) as im:  # header only (lazy): mode and format, which data.images does not report
        rec.update(width=im.width, height=im.height, mode=im.mode, format=im.format or "")
    rgb = read_rgb(path, cfg.stats_size)
    rec.update(image_stats(rgb, cfg.white_level))
    _, od, tissue = _tissue(rgb, cfg.white_level)
    for c in range(3):
        od_hist[c] = np.histogram(np.clip(od[..., c][tissue], 0, OD_BINS[-1] - 1e-6), OD_BINS)[0]
    phash[:] = _phash_bits(read_rgb(path), cfg.rotated_dup_distance >= 0)
    return rec


def scan_images(df: pd.DataFrame, cfg: AuditConfig | None = None) -> ImageScan:
    """Read every image of ``df`` once; unreadable files get ``error`` set instead of failing the audit."""
    cfg = cfg or AuditConfig()
    od_hist = np.zeros((len(df), 3, len(OD_BINS) - 1), np.int64)
    phash = np.zeros((len(df), 8, 64), bool)
    rows: list[dict[str, Any]] = []
    for i, path in enumerate(df["path"]):
        try:
            rows.append({"path": path, "error": "", **_scan_one(path, cfg, od_hist[i], phash[i])})
        except Exception as e:  # keep going: an unreadable image is itself an audit finding
            rows.append({"path": path, "error": f"{type(e).__name__}: {e}"})
    table = pd.DataFrame(rows)
    for col in ("row", "slide", "center", "label", "y", "split", "mask"):
        if col in df.columns:
            table[col] = df[col].to_numpy()
    return ImageScan(table=table, od_hist=od_hist, phash=phash)


def mask_areas(df: pd.DataFrame, size: int = 224) -> pd.Series:
    """Share of each patch covered by its glomerulus mask (NaN where no mask path, -1 where unreadable)."""

    def area(m: str) -> float:
        try:
            return float(read_mask(m, size).mean()) if m else np.nan
        except Exception:
            return -1.0

    masks = df["mask"] if "mask" in df else [""] * len(df)
    return pd.Series([area(m) for m in masks], index=df.index, name="mask_area")
