"""The pixel budget: image sizes read from PNG/JPEG/TIFF/BMP headers, so a decompression bomb is refused before decoding.

A small file can declare a huge image (an 875 KB PNG of 30000x30000 pixels decodes to 2.7 GB). Every place that
decodes patches (``glomlib data check``, the cache, ``predict``, the audit) first reads the declared width and
height from the file header and refuses images over the budget: ``$GLOMLIB_MAX_PIXELS`` (default 50 million
pixels; a glomerulus patch is well under 1 million). OpenCV's own decoder limit is set to the same budget.
"""

from __future__ import annotations

import os

from glomlib.core.errors import ConfigError
import struct

DEFAULT_MAX_PIXELS = 50_000_000
ENV = "GLOMLIB_MAX_PIXELS"


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the budget; the message names the file, its size and the budget."""


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


# OpenCV reads this once, at its first decode: keep its own limit at the budget too (a second line of defence
# for formats whose header glomlib does not parse).
try:
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels()))
except ValueError:  # a bad $GLOMLIB_MAX_PIXELS is reported where the budget is used
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    for _ in range(10_000):  # markers before the first frame header
        b = f.read(1)
        while b and b != b"\xff":
            b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = struct.unpack(">H", seg)[0]
        if marker in _SOF:
            data = f.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return w, h
        f.seek(length - 2, os.SEEK_CUR)
    return None


def _tiff_size(f, head: bytes) -> tuple[int, int] | None:
    end = "<" if head[:2] == b"II" else ">"
    if struct.unpack(end + "H", head[2:4])[0] != 42:
        return None  # BigTIFF and others: left to the decoder's own limit
    f.seek(struct.unpack(end + "I", head[4:8])[0])
    raw = f.read(2)
    if len(raw) < 2:
        return None
    n = struct.unpack(end + "H", raw)[0]
    w = h = None
    for _ in range(min(n, 4096)):
        e = f.read(12)
        if len(e) < 12:
            break
        tag, typ = struct.unpack(end + "HH", e[:4])
        if tag in (256, 257):
            val = struct.unpack(end + "H", e[8:10])[0] if typ == 3 else struct.unpack(end + "I", e[8:12])[0]
            if tag == 256:
                w = val
            else:
                h = val
    return (w, h) if w is not None and h is not None else None


def declared_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) that the file's header declares (PNG, JPEG, TIFF, BMP), without decoding; None when the
    format is not one of these or the header is unreadable (the decoder then reports the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff_size(f, head)
            if head[:2] == b"BM" and len(head) >= 26:
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
    except (OSError, struct.error):
        return None
    return None


def over_budget(path: str | os.PathLike, limit: int | None = None) -> str | None:
    """A message when ``path`` declares more pixels than the budget, else None."""
    limit = max_pixels() if limit is None else int(limit)
    size = declared_size(path)
    if size is None:
        return None
    w, h = size
    if w * h <= limit:
        return None
    return (f"the image declares {w}x{h} pixels ({w * h / 1e6:.0f} Mpx), over the pixel budget of "
            f"{limit / 1e6:g} Mpx; it was not decoded (a decompression bomb, or a whole-slide image instead of a "
            f"patch). Cut it into patches, or raise the budget with {ENV}=<pixels> if it is genuine")


def check_pixel_budget(path: str | os.PathLike, limit: int | None = None, row: int | None = None) -> None:
    """Raise :class:`ImageTooLargeError` (naming the row, the file and the declared size) when over budget."""
    msg = over_budget(path, limit)
    if msg:
        where = f"row {row} ({path})" if row else str(path)
        raise ImageTooLargeError(f"{where}: {msg}")
