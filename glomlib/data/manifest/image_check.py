"""One image file checked: missing, empty, too large, truncated, undecodable, or an unusual mode (a warning).

Returns ``(severity, kind, message)`` triples; the manifest checks add the row and the file.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from glomlib.data.images import ImageReadError, over_budget, read_unchanged

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_COLOR = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
GREY_NOTE = "grey image, converted to RGB by repeating the grey channel"


def _access(path: str) -> tuple[tuple[str, str, str] | None, int]:
    """The problem of a file that cannot be used at all (missing, folder, empty, over the budget), and its size."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return ("error", "missing-file", "file does not exist"), 0
    except OSError as e:
        return ("error", "unreadable", f"cannot access file: {e}"), 0
    if os.path.isdir(path):
        return ("error", "unreadable", "is a folder, not an image file"), size
    if size == 0:
        return ("error", "empty-file", "file is empty (0 bytes)"), size
    too_large = over_budget(path)  # from the header, before anything is decoded
    return (("error", "too-large", too_large) if too_large else None), size


def _png(head: bytes, tail: bytes, size: int) -> list[tuple[str, str, str]]:
    """Damaged header, missing end marker, or the mode notes (from the IHDR bit depth and colour type)."""
    if len(head) < 33 or head[12:16] != b"IHDR":
        return [("error", "unreadable", "PNG header is damaged")]
    if tail != _PNG_IEND:
        return [("error", "truncated", f"PNG is truncated (no end marker; {size} bytes); re-export or re-download it")]
    depth, ctype = struct.unpack(">BB", head[24:26])
    notes = (
        [f"{_PNG_COLOR.get(ctype)} image, converted to RGB by repeating the grey channel"] if ctype in (0, 4) else []
    )
    notes += ["alpha channel dropped"] * (ctype in (4, 6)) + ["palette image, converted to RGB"] * (ctype == 3)
    notes += ["16-bit image, scaled to 8-bit"] * (depth == 16)
    return [("warning", "mode", "; ".join(notes))] if notes else []


def _decoded(path: str, is_png: bool) -> list[tuple[str, str, str]]:
    """Decode the pixels: an error when they cannot be, else the mode notes of non-PNG files."""
    try:
        img, err = read_unchanged(path), ""
    except ImageReadError:
        img, err = None, ""
    except Exception as e:  # noqa: BLE001 - any decoder failure is "unreadable"
        img, err = None, str(e)
    if img is None:
        what = "damaged image data" if is_png else "is it a PNG/JPEG/TIFF image?"
        return [("error", "unreadable", "cannot be decoded as an image" + (f": {err}" if err else "") + f"; {what}")]
    out = []
    if not is_png:
        c = 1 if img.ndim == 2 else img.shape[2]
        notes = [GREY_NOTE] * (c in (1, 2)) + ["alpha channel dropped"] * (c in (2, 4))
        if img.dtype == np.uint16:
            notes.append("16-bit image, scaled to 8-bit")
        elif img.dtype != np.uint8:
            return [("error", "mode", f"unsupported pixel type {img.dtype}; convert to 8-bit RGB")]
        out = [("warning", "mode", "; ".join(notes))] if notes else []
    if min(img.shape[:2]) < 2:
        return [("error", "unreadable", f"image is degenerate ({img.shape[1]}x{img.shape[0]} pixels)")]
    return out


def check_image(path: str, full: bool = True) -> list[tuple[str, str, str]]:
    """Check one image file. Returns a list of (severity, kind, message); empty = fine.

    Quick mode (``full=False``) reads the PNG header and the PNG/JPEG trailer only (catches missing, empty,
    truncated, non-image files and unusual modes); full mode also decodes the pixels.
    """
    problem, size = _access(path)
    if problem:
        return [problem]
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(max(0, size - 12))
            tail = f.read(12)
    except OSError as e:
        return [("error", "unreadable", f"cannot read file: {e}")]
    out: list[tuple[str, str, str]] = []
    is_png = head[:8] == _PNG_SIG
    if is_png:
        out = _png(head, tail, size)
        if not full or any(s == "error" for s, _, _ in out):
            return out
    elif head[:2] == b"\xff\xd8" and not full:
        return [] if tail[-2:] == b"\xff\xd9" else [("error", "truncated", "JPEG is truncated (no end marker)")]
    decoded = _decoded(path, is_png)
    return decoded if any(s == "error" for s, _, _ in decoded) else out + decoded
