"""Images and masks for display: a grey tile or no outline instead of an error for an unreadable file."""

from __future__ import annotations

import numpy as np

from glomlib.data.images import read_mask, read_rgb


def tile(path: str, size: int | None) -> np.ndarray:
    """The image as RGB uint8 (size x size; None: native size); a grey placeholder when it cannot be read."""
    try:
        return read_rgb(path, size)
    except Exception:
        return np.full((size or 224, size or 224, 3), 128, np.uint8)


def mask_or_none(path: str, size: int | None) -> np.ndarray | None:
    """The mask as bool (size x size); None without a path or when it cannot be read."""
    try:
        return read_mask(path, size) if path else None
    except Exception:
        return None
