"""Open a whole-slide image with tiffslide (default) or OpenSlide and read RGB regions in level-0 coordinates.

The MPP (micrometres per pixel) is the one number every crop depends on, so it is resolved in a fixed order and
its source is kept: an ``mpp`` given by the user (the slides CSV), the reader's own MPP property, the TIFF
resolution tags (``CENTIMETER`` or ``INCH``; a value outside 0.05-10 um/px is a default, not a scan). A slide
with none of these has no MPP and is refused by its caller.

Coordinates are level-0 pixels of the annotation frame: QuPath shows MRXS (and other bounded) slides from their
bounds, so the bounds offset is added before reading. Outside the slide the crop is white.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

READERS = ("tiffslide", "openslide")
DEFAULT_READER = "tiffslide"
MPP_RANGE = (0.05, 10.0)  # um/px a scanner can write; a resolution tag outside it is a 72/96 dpi default
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit INCH, CENTIMETER -> micrometres


class SlideError(ValueError):
    """A slide (or its annotations) cannot be used; the message names the slide and says what to do."""

    exit_code = 1  # glomlib.cli's exit-code table: a data problem


@dataclass
class Slide:
    """An open slide: pyramid geometry, MPP with its source, bounds offset, and white-padded region reads."""

    name: str
    path: Path
    reader: str
    handle: Any = field(repr=False)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    mpp_source: str
    bounds: tuple[int, int] = (0, 0)
    vendor: str = ""

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        return float(self.mpp) * self.level_downsamples[level]

    def read(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of ``level`` whose top-left is level-0 ``(x, y)``; white outside the slide."""
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        lx, ly = int(np.floor((x + self.bounds[0]) / ds)), int(np.floor((y + self.bounds[1]) / ds))
        out = np.full((h, w, 3), 255, np.uint8)
        ix0, iy0, ix1, iy1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if ix1 <= ix0 or iy1 <= iy0:
            return out
        loc = (int(round(ix0 * ds)), int(round(iy0 * ds)))
        region = np.asarray(self.handle.read_region(loc, level, (ix1 - ix0, iy1 - iy0)))
        out[iy0 - ly : iy1 - ly, ix0 - lx : ix1 - lx] = _to_rgb(region)
        return out

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """The whole slide as RGB (longer side <= ``max_side``) and its level-0 pixels per thumbnail pixel;
        an outline point ``(x, y)`` lies at ``((x + bounds_x) / scale, (y + bounds_y) / scale)``."""
        im = self.handle.get_thumbnail((max_side, max_side)).convert("RGB")
        return np.asarray(im), self.dimensions[0] / im.size[0]

    def frame_size(self) -> tuple[int, int]:
        """Width and height of the annotation frame: the bounds when the slide has them, else level 0."""
        props = self.handle.properties
        bw, bh = _prop(props, self.reader, "bounds-width"), _prop(props, self.reader, "bounds-height")
        return (int(bw), int(bh)) if bw and bh else self.dimensions

    def close(self) -> None:
        self.handle.close()


def _to_rgb(region: np.ndarray) -> np.ndarray:
    """RGB(A) -> RGB, transparent pixels (OpenSlide outside the scanned area) composited over white."""
    if region.ndim == 2:
        return np.repeat(region[..., None], 3, axis=2)
    if region.shape[2] == 4 and not (region[..., 3] == 255).all():
        a = region[..., 3:4].astype(np.float32) / 255.0
        rgb = region[..., :3].astype(np.float32) + 255.0 * (1.0 - a)  # OpenSlide pixels are premultiplied
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return region[..., :3]


def _prop(props: Any, reader: str, key: str) -> Any:
    v = props.get(f"{reader}.{key}")
    return None if v in (None, "") else v


def _open_handle(path: Path, reader: str, name: str) -> Any:
    if reader not in READERS:
        raise SlideError(f"slide {name}: unknown reader {reader!r}; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise SlideError(f"slide {name}: file {path} does not exist")
    if reader == "openslide":
        try:
            import openslide
        except ImportError as e:  # the optional extra (libopenslide ships in the openslide-bin wheel)
            raise SlideError(
                f"slide {name}: --reader openslide needs the optional extra: pip install 'glomlib[openslide]' ({e})"
            ) from None
        opener = openslide.OpenSlide
    else:
        import tiffslide

        opener = tiffslide.TiffSlide
    try:
        return opener(str(path))
    except Exception as e:  # each reader raises its own types for "not a slide"
        hint = "" if reader == "openslide" else " (vendor formats such as .mrxs, .vms, .scn need --reader openslide)"
        raise SlideError(
            f"slide {name}: {path} is not a slide {reader} can read: {type(e).__name__}: {e}{hint}"
        ) from None


def tiff_tag_mpp(path: str | os.PathLike) -> tuple[float | None, str]:
    """MPP from a TIFF's first page resolution tags, and where it came from (or why there is none)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            tags = page.tags
            unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
            xres = tags["XResolution"].value if "XResolution" in tags else None
    except Exception:
        return None, "not a TIFF"
    if xres is None or unit not in _UM_PER_UNIT:
        return None, "TIFF without a physical resolution unit"
    num, den = xres if isinstance(xres, tuple) else (xres, 1)
    if not num:
        return None, "TIFF resolution 0"
    mpp = _UM_PER_UNIT[unit] * den / num
    unit_name = "INCH" if unit == 2 else "CENTIMETER"
    if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return None, f"TIFF resolution tags give {mpp:.4g} um/px ({unit_name}): a default, not a scan resolution"
    return mpp, f"TIFF resolution tags ({unit_name})"


def _resolve_mpp(handle: Any, reader: str, path: Path, override: float | None) -> tuple[float | None, str]:
    if override is not None and np.isfinite(override) and override > 0:
        return float(override), "given (slides CSV mpp column)"
    props = handle.properties
    mx, my = _prop(props, reader, "mpp-x"), _prop(props, reader, "mpp-y")
    if mx is not None:
        mx = float(mx)
        if my is not None and abs(float(my) - mx) > 0.01 * mx:
            return None, f"non-square pixels ({mx} x {my} um) are not supported"
        if MPP_RANGE[0] <= mx <= MPP_RANGE[1]:
            return mx, f"{reader} property {reader}.mpp-x"
    return tiff_tag_mpp(path)


def open_slide(
    path: str | os.PathLike, reader: str = DEFAULT_READER, *, name: str = "", mpp: float | None = None
) -> Slide:
    """Open ``path`` with ``reader``; ``mpp`` overrides the file's MPP. Raises :class:`SlideError` naming the slide."""
    path = Path(path).expanduser()
    name = name or path.stem
    h = _open_handle(path, reader, name)
    m, source = _resolve_mpp(h, reader, path, mpp)
    props = h.properties
    bx, by = _prop(props, reader, "bounds-x"), _prop(props, reader, "bounds-y")
    return Slide(
        name=name,
        path=path,
        reader=reader,
        handle=h,
        level_dimensions=tuple((int(w), int(hh)) for w, hh in h.level_dimensions),
        level_downsamples=tuple(float(d) for d in h.level_downsamples),
        mpp=m,
        mpp_source=source,
        bounds=(int(bx or 0), int(by or 0)),
        vendor=str(_prop(props, reader, "vendor") or ""),
    )


def reader_version(reader: str) -> str:
    from importlib import metadata

    dist = {"tiffslide": "tiffslide", "openslide": "openslide-python"}[reader]
    try:
        v = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
    if reader == "openslide":
        import openslide

        v += f" (libopenslide {openslide.__library_version__})"
    return v


def slide_info(slide: Slide) -> dict[str, Any]:
    """What ``glomlib slides inspect`` prints: levels, dimensions, MPP and its source, bounds offset."""
    levels = [
        {
            "level": i,
            "width": w,
            "height": h,
            "downsample": round(d, 4),
            "mpp": None if slide.mpp is None else round(slide.level_mpp(i), 5),
        }
        for i, ((w, h), d) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))
    ]
    return {
        "slide": slide.name,
        "path": str(slide.path),
        "reader": f"{slide.reader} {reader_version(slide.reader)}",
        "vendor": slide.vendor,
        "width": slide.dimensions[0],
        "height": slide.dimensions[1],
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "bounds_offset": list(slide.bounds),
        "levels": levels,
    }
