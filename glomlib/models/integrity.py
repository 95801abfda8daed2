"""What makes a model file trustworthy: its metadata is valid, consistent with its tensors, and unedited.

At save the metadata (as stored) and the tensors' names, shapes and dtypes are covered by a sha256
(``meta_sha256``); on load a file whose checksum no longer matches (an edited image_size, swapped label names)
is refused, as is metadata that contradicts itself. ``pixel_stats`` is the training images' per-channel
intensity, recorded so that ``predict``/``evaluate`` can flag images far from what the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

CHECKSUM_KEY = "meta_sha256"
TEXT_KEYS = ("format", "backbone", "positive_label", "negative_label")  # names: "1" stays "1", not 1


def meta_to_strings(meta: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata: strings kept, everything else JSON-encoded."""
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()}


def meta_from_strings(meta: Mapping[str, str]) -> dict[str, Any]:
    """Decode stored metadata: JSON values, except names (labels, backbone...), which stay text ("1" stays "1")."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = (None if v == "null" else v) if k in TEXT_KEYS else json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def checksum(stored: Mapping[str, str], shapes: Iterable[tuple[str, Iterable[int], str]]) -> str:
    """sha256 of the stored metadata strings (without the checksum itself) and every tensor's name/shape/dtype."""
    d = hashlib.sha256()
    for k in sorted(k for k in stored if k != CHECKSUM_KEY):
        d.update(json.dumps([k, stored[k]]).encode() + b"\n")
    for name, shape, dtype in sorted((n, list(s), str(t)) for n, s, t in shapes):
        d.update(json.dumps([name, shape, dtype]).encode() + b"\n")
    return d.hexdigest()


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _triple_problems(meta: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("mean", "std"):
        v = meta.get(key)
        nums = [_number(x) for x in v] if isinstance(v, list) else []
        if len(nums) != 3 or any(x is None for x in nums):
            out.append(f"{key}={v!r} must be 3 finite numbers (R, G, B)")
        elif key == "std" and min(nums) <= 0:
            out.append(f"std={v!r} must be > 0 (it divides the pixels; 0 gives NaN probabilities)")
    return out


def _label_problems(meta: Mapping[str, Any]) -> list[str]:
    pos, neg = meta.get("positive_label"), meta.get("negative_label")
    if not isinstance(pos, str) or not pos.strip():
        return [f"positive_label={pos!r} must name the positive class (a non-empty text)"]
    if neg not in (None, "") and (not isinstance(neg, str) or neg.strip() == pos.strip()):
        return [f"negative_label={neg!r} must be a class name other than positive_label={pos!r}"]
    return []


def meta_problems(meta: Mapping[str, Any], classifier: bool = True) -> list[str]:
    """What is wrong with a model (or encoder) file's metadata: backbone, image_size, mean/std, labels, threshold,
    pixel statistics."""
    from glomlib.data.stain import STAIN_METHODS
    from glomlib.models.backbones import BACKBONES

    out = []
    if meta.get("backbone") not in BACKBONES:
        out.append(f"backbone={meta.get('backbone')!r} is not one of {list(BACKBONES)}")
    if "image_size" in meta or classifier:
        size = meta.get("image_size")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 8192:
            out.append(f"image_size={size!r} must be a whole number of pixels in 1..8192")
    out += _triple_problems(meta)
    if classifier:
        out += _label_problems(meta)
        if "threshold" in meta and (_number(meta["threshold"]) is None or not 0 <= float(meta["threshold"]) <= 1):
            out.append(f"threshold={meta['threshold']!r} must be a probability in [0, 1]")
    if meta.get("stain_normalize", "") not in STAIN_METHODS:
        out.append(f"stain_normalize={meta['stain_normalize']!r} is not one of {list(STAIN_METHODS)}")
    stats = meta.get("pixel_stats")
    if stats is not None and (not isinstance(stats, dict) or _triple_problems(stats)):
        out.append(f"pixel_stats={stats!r} must hold 3 channel means and 3 stds > 0")
    return out


def pixel_stats(images: Any) -> dict[str, list[float]]:
    """Per-channel mean and std, over images, of each uint8 RGB image's channel means (0..255): how bright and
    how stained the training images were. Store it as the model's ``pixel_stats``."""
    x = np.asarray(images)
    means = x.reshape(len(x), -1, x.shape[-1]).mean(axis=1, dtype=np.float64)
    std = np.maximum(means.std(axis=0), 1.0)  # a floor: a near-constant training set still tolerates noise
    return {"mean": [round(float(v), 3) for v in means.mean(axis=0)], "std": [round(float(v), 3) for v in std]}
