"""The one place that opens image and mask files: sizes (lazily, from the header), RGB pixels and binary masks.

Every caller (the cache, the manifest check, audit, explain, review) reads through these functions, so two pages
can never disagree about an image's pixels or a mask's outline. Pixels are decoded by OpenCV and resized with
its ``INTER_AREA`` (the cache's decoder since its first version: cached training pixels never changed); the size
comes from PIL's lazy header read, and an image over the pixel budget (:mod:`glomlib.data.pixels`) is refused
before anything is decoded.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from glomlib.data.pixels import ENV, ImageTooLargeError, max_pixels

MASK_THRESHOLD = 127  # a mask pixel is inside the glomerulus when its brightest channel is above this
INTERPOLATIONS = {
    "area": "INTER_AREA",
    "linear": "INTER_LINEAR",
    "cubic": "INTER_CUBIC",
    "nearest": "INTER_NEAREST",
    "lanczos": "INTER_LANCZOS4",
}
# glomlib's budget is checked from the header before every decode below; PIL's fixed limit would refuse a
# large file before its declared size could be reported.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(ValueError):
    """An image file cannot be read or decoded; the message names the file (and the row, when cached)."""

    exit_code = 1  # glomlib.cli's exit-code table


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header; PIL opens lazily, so no pixels are decoded."""
    with Image.open(path) as im:
        return im.size


def over_budget(path: str | os.PathLike, limit: int | None = None) -> str | None:
    """A message when ``path`` declares more pixels than the budget, else None (also for a header PIL cannot
    read: the decoder then reports the file)."""
    limit = max_pixels() if limit is None else int(limit)
    try:
        w, h = image_size(path)
    except (OSError, ValueError, SyntaxError):
        return None
    if w * h <= limit:
        return None
    return f"the image declares {w}x{h} pixels ({w * h / 1e6:.0f} Mpx), over the pixel budget of {limit / 1e6:g} Mpx; it was not decoded (a decompression bomb, or a whole-slide image instead of a patch). Cut it into patches, or raise the budget with {ENV}=<pixels> if it is genuine"


def check_pixel_budget(path: str | os.PathLike, limit: int | None = None, row: int | None = None) -> None:
    """Raise :class:`ImageTooLargeError` (naming the row, the file and the declared size) when over budget."""
    msg = over_budget(path, limit)
    if msg:
        raise ImageTooLargeError(f"{f'row {row} ({path})' if row else path}: {msg}")


def read_unchanged(path: str | os.PathLike) -> np.ndarray:
    """The file's pixels as OpenCV decodes them (``IMREAD_UNCHANGED``: grey / BGR / BGRA, 8 or 16 bit)."""
    import cv2

    check_pixel_budget(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(
            f"cannot read image {path}: {e.strerror or e}; run 'glomlib data check' on the manifest"
        ) from e
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(
            f"cannot decode image {path} (empty, truncated or not an image); run 'glomlib data check' on the manifest"
        )
    return img


def to_rgb8(img: np.ndarray, path: str | os.PathLike = "") -> np.ndarray:
    """OpenCV's ``IMREAD_UNCHANGED`` output -> RGB uint8: grey repeated, alpha dropped, 16-bit scaled (``/257``)."""
    import cv2

    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"image {path}: unsupported pixel type {img.dtype}; convert it to 8-bit RGB")
    c = 1 if img.ndim == 2 else img.shape[2]
    if c in (1, 2):  # grey, grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(img if img.ndim == 2 else img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if c in (3, 4):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if c == 3 else cv2.COLOR_BGRA2RGB)
    raise ValueError(f"image {path}: unsupported channel count {c}")


def _resize(img: np.ndarray, size: int | None, interpolation: str) -> np.ndarray:
    import cv2

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
    if size is None or img.shape[:2] == (size, size):
        return img
    return cv2.resize(img, (size, size), interpolation=getattr(cv2, INTERPOLATIONS[interpolation]))


def read_rgb(path: str | os.PathLike, size: int | None = None, *, interpolation: str = "area") -> np.ndarray:
    """The image as RGB uint8 (H, W, 3); resized to ``size`` x ``size`` (OpenCV, ``INTER_AREA``) when given.
    Raises :class:`ImageReadError` / :class:`ImageTooLargeError` naming the file."""
    return _resize(to_rgb8(read_unchanged(path), os.fspath(path)), size, interpolation)


def read_mask(path: str | os.PathLike, size: int | None = None, *, interpolation: str = "area") -> np.ndarray:
    """The mask as bool (H, W). Rule (the cache's): decoded like :func:`read_rgb`, the brightest channel of each
    pixel, resized with ``INTER_AREA`` when ``size`` is given, inside where above ``MASK_THRESHOLD`` (127)."""
    grey = to_rgb8(read_unchanged(path), os.fspath(path)).max(axis=2)
    return _resize(grey, size, interpolation) > MASK_THRESHOLD
