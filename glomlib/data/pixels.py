"""The pixel budget: a small file can declare a huge image (an 875 KB PNG of 30000x30000 pixels decodes to 2.7 GB).

Every decode (``glomlib data check``, the cache, ``predict``, the audit) first reads the declared size from the
file header (:func:`glomlib.data.images.image_size`) and refuses images over ``$GLOMLIB_MAX_PIXELS`` (default 50
million pixels; a glomerulus patch is well under 1 million). OpenCV's own decoder limit is set to the same budget.
"""

from __future__ import annotations

import os

from glomlib.core.errors import ConfigError

DEFAULT_MAX_PIXELS = 50_000_000
ENV = "GLOMLIB_MAX_PIXELS"


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the budget; the message names the file, its size and the budget."""

    exit_code = 1  # glomlib.cli's exit-code table


def max_pixels() -> int:
    """The pixel budget: ``$GLOMLIB_MAX_PIXELS`` or 50 million."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise ConfigError(f"{ENV}={raw!r} is not a number of pixels (e.g. {DEFAULT_MAX_PIXELS})") from None
    if value < 1:
        raise ConfigError(f"{ENV}={raw!r} must be a positive number of pixels")
    return value


# OpenCV reads this once, at its first decode: its own limit is a second line of defence.
try:
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels()))
except ValueError:  # a bad $GLOMLIB_MAX_PIXELS is reported where the budget is used
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))
