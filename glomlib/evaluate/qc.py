"""Input quality control for ``predict`` and ``evaluate``.

A per-row ``qc`` column ("ok" or why the probability
deserves doubt) so that a 20000x200 strip, a blank tile or another stain never gets a silent, confident score.
Images below :data:`MIN_SIDE` pixels are refused by name: there is nothing to score."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from glomlib.data.images import ImageReadError, image_size
from glomlib.data.stain import normalize_stain

MIN_SIDE = 8  # pixels: an image with a shorter side is refused
SMALL_SHARE = 0.25  # flagged "too small" when its short side is below this share of the model's image size
MAX_ASPECT = 4.0  # flagged when its long side exceeds this many times its short side
BLANK_STD = 4.0  # flagged "blank tile" when its grey levels vary less than this (0-255)
STAIN_Z = 4.0  # flagged when a channel mean lies this many training SDs from the training images' mean


def _size(path: str) -> tuple[int, int]:
    try:
        return image_size(path)
    except (OSError, ValueError, SyntaxError):
        return (0, 0)  # unreadable: decoding reports it, naming the row


def sizes_checked(paths: Sequence[str]) -> list[tuple[int, int]]:
    """``(width, height)`` of each file; raises naming every image below :data:`MIN_SIDE` pixels (exit 1)."""
    sizes = [_size(p) for p in paths]
    tiny = [f"{p} ({w}x{h})" for p, (w, h) in zip(paths, sizes) if 0 < min(w, h) < MIN_SIDE]
    if tiny:
        raise ImageReadError(
            f"{len(tiny)} image(s) smaller than {MIN_SIDE} pixels on a side cannot be scored: {', '.join(tiny[:5])}"
            + (" ..." if len(tiny) > 5 else "")
            + ". Remove them from the manifest (or cut larger patches)."
        )
    return sizes


def _row_reason(size: tuple[int, int], image: np.ndarray, seen: np.ndarray, meta: Mapping[str, Any]) -> list[str]:
    w, h = size
    out = []
    if w and min(w, h) < SMALL_SHARE * int(meta["image_size"]):
        out.append(f"too small ({w}x{h} px)")
    if w and max(w, h) > MAX_ASPECT * min(w, h):
        out.append(f"extreme aspect ratio ({w}x{h})")
    if float(image.mean(axis=-1).std()) < BLANK_STD:
        out.append("blank tile")
    stats = meta.get("pixel_stats")
    if stats:
        z = np.abs(seen.reshape(-1, 3).mean(axis=0) - np.asarray(stats["mean"])) / np.asarray(stats["std"])
        if float(z.max()) > STAIN_Z:
            out.append(f"far from the training stain/intensity statistics (z={float(z.max()):.1f})")
    return out


def qc_column(sizes: Sequence[tuple[int, int]], images: Any, meta: Mapping[str, Any], seen: Any = None) -> list[str]:
    """ "ok" or the reasons (joined by "; ") for each image (``images``: the decoded uint8 RGB patches). The
    training statistics (``pixel_stats``, of stain-normalised images when the model normalises) are compared with
    the image as the model sees it: ``seen`` (``glomlib.evaluate.predict.model_input``), computed here if absent."""
    stain = meta.get("stain_normalize")
    if seen is None:
        seen = normalize_stain(np.asarray(images), stain) if stain and len(images) else images
    return [
        "; ".join(_row_reason(s, np.asarray(im), np.asarray(v), meta)) or "ok" for s, im, v in zip(sizes, images, seen)
    ]


def qc_summary(qc: Sequence[str]) -> dict[str, Any]:
    """``{"flagged": n, "reasons": {reason: count}}`` (a reason's measured value left out)."""
    reasons = Counter(r.split(" (")[0] for q in qc if q != "ok" for r in q.split("; "))
    return {"flagged": int(sum(q != "ok" for q in qc)), "reasons": dict(reasons)}


def qc_line(qc: Sequence[str]) -> str:
    s = qc_summary(qc)
    if not s["flagged"]:
        return f"qc: all {len(qc)} images ok"
    why = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items())
    return f"qc: {s['flagged']} of {len(qc)} images flagged ({why}); see the qc column"
