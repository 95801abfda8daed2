"""The one place that opens image and mask files: sizes (lazily, from the header), RGB pixels and binary masks.

Every caller (cache, audit, explain, review, manifest checks) reads through these functions, so two pages can
never disagree about an image's size or a mask's outline.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

MASK_THRESHOLD = 127  # a mask pixel is inside the glomerulus when its grey value is above this


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header; PIL opens lazily, so no pixels are decoded."""
    with Image.open(path) as im:
        return im.size


def read_rgb(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """The image as RGB uint8 (H, W, 3); resized (bilinear) to ``size`` x ``size`` when given."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im)


def read_mask(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """The mask as bool (H, W): grey value above ``MASK_THRESHOLD``; resized (nearest) when ``size`` is given."""
    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None:
            im = im.resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(im) > MASK_THRESHOLD
