"""Stain normalisation of uint8 RGB patches (Reinhard colour transfer in OpenCV's LAB space), torch-free.

Reinhard et al. (2001): each image's LAB channels are standardised and mapped to a target mean and standard
deviation, so that a dark, strongly stained centre and a pale one look alike to the network. The method is
stateless given its target, so the same call is applied when training (``glomlib.train.finetune`` with
``stain_normalize="reinhard"``) and when a saved model predicts (the model file records ``stain_normalize``).

The default target :data:`REINHARD_TARGET` is the median per-patch LAB mean/std (OpenCV 8-bit LAB) of the
glomeruli-pas patches of SAS and VUHSK at 64 px — a generic PAS look, fixed in code like ImageNet's mean/std so
that no test image ever shapes it. (SESCAM's median lightness is 111 against 168 there.)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

STAIN_METHODS = ("", "reinhard")
#: (mean L, a, b), (std L, a, b) in OpenCV's 8-bit LAB
REINHARD_TARGET: dict[str, tuple[float, float, float]] = {"mean": (167.7, 150.5, 111.7), "std": (37.0, 10.7, 7.2)}


def reinhard(images: Any, target: dict[str, Sequence[float]] | None = None) -> np.ndarray:
    """Reinhard-normalised copy of uint8 RGB ``images`` ``(N, H, W, 3)`` or ``(H, W, 3)``."""
    import cv2

    t = target or REINHARD_TARGET
    tm, ts = np.asarray(t["mean"], dtype=np.float32), np.asarray(t["std"], dtype=np.float32)
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3 or arr.ndim not in (3, 4):
        raise ValueError(f"stain normalisation expects uint8 RGB images (N, H, W, 3); got {arr.dtype} {arr.shape}")
    single = arr.ndim == 3
    batch = arr[None] if single else arr
    out = np.empty_like(batch)
    for i, im in enumerate(batch):
        lab = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2LAB).astype(np.float32)
        m = lab.reshape(-1, 3).mean(0)
        s = lab.reshape(-1, 3).std(0)
        lab = (lab - m) / np.maximum(s, 1e-3) * ts + tm
        out[i] = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out[0] if single else out


def normalize_stain(images: Any, method: str) -> np.ndarray:
    """``images`` unchanged for ``method=""``; Reinhard-normalised for ``"reinhard"``."""
    if not method:
        return np.asarray(images)
    if method == "reinhard":
        return reinhard(images)
    raise ValueError(f"stain_normalize={method!r}: choose one of {list(STAIN_METHODS)} ('' = off).")


__all__ = ["STAIN_METHODS", "REINHARD_TARGET", "reinhard", "normalize_stain"]
