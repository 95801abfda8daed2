"""Patch cache: decode every image once, resize, keep as a uint8 memory-mapped array on disk.

``load_images(paths, image_size)`` returns a read-only ``np.memmap`` of shape (N, S, S, 3), RGB, uint8.
The cache entry is keyed by a fingerprint of (every file's content hash, in order; size; interpolation;
cache format version), so a second run with the same data and size opens the file without decoding
anything, and changed image bytes can never be served stale. Building writes row by row into
``np.lib.format.open_memmap`` (memory stays bounded, whatever the dataset size) under a temporary name
and renames it into place when complete, so an interrupted build leaves no half-written entry.

Each entry is ``<cache_dir>/<kind>-<S>px-<key>.npy`` plus ``.json`` (index: source paths, hashes, size,
interpolation, conversions applied). Default cache dir: ``$GLOMLIB_CACHE`` or ``<project root>/data/cache``.

Image modes: grey -> RGB (channel repeated), alpha dropped, 16-bit scaled to 8-bit (``/257``).

``load_images(..., stain="macenko"|"reinhard")`` caches the stain-normalised images as their own entry (normalised
once, after resizing, when the entry is built; the images a method had to leave unchanged are listed in the entry's
index, see :func:`stain_report`), so training reads them as fast as plain images, every epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from glomlib.core.io import TMP_MARK, DiskFullError, is_disk_full, sweep_stale_temp, write_text_atomic
from glomlib.data.manifest import hash_files
from glomlib.data.pixels import ImageTooLargeError, check_pixel_budget
from glomlib.data.stain import STAIN_METHODS, StainReport, normalize_stain

CACHE_VERSION = 1
INTERPOLATIONS = {"area": "INTER_AREA", "linear": "INTER_LINEAR", "cubic": "INTER_CUBIC",
                  "nearest": "INTER_NEAREST", "lanczos": "INTER_LANCZOS4"}


class ImageReadError(ValueError):
    """An image file cannot be read or decoded; the message names the file (and the row, when cached)."""


def default_cache_dir() -> Path:
    """``$GLOMLIB_CACHE`` or ``<project root>/data/cache``."""
    env = os.environ.get("GLOMLIB_CACHE")
    if env:
        return Path(env).expanduser()
    from glomlib.core.paths import project_root

    return project_root() / "data" / "cache"


def _cv2_interp(name: str) -> int:
    import cv2

    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation {name!r} is not one of {sorted(INTERPOLATIONS)}")
    return getattr(cv2, INTERPOLATIONS[name])


def decode_image(path: str, image_size: int | None = None, interpolation: str = "area") -> np.ndarray:
    """Decode one image file to RGB uint8 (H, W, 3), optionally resized to (S, S). Raises naming the file."""
    import cv2

    check_pixel_budget(path)  # from the header: a decompression bomb is never decoded
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"cannot read image {path}: {e.strerror or e}; run 'glomlib data check' on the "
                             "manifest") from e
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"cannot decode image {path} (empty, truncated or not an image); "
                             f"run 'glomlib data check' on the manifest")
    img = to_rgb8(img, path)
    if image_size is not None and img.shape[:2] != (image_size, image_size):
        img = cv2.resize(img, (image_size, image_size), interpolation=_cv2_interp(interpolation))
    return img


def to_rgb8(img: np.ndarray, path: str = "") -> np.ndarray:
    """OpenCV's IMREAD_UNCHANGED output (grey / BGR / BGRA, 8 or 16 bit) -> RGB uint8."""
    import cv2

    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
        img = img.astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"image {path}: unsupported pixel type {img.dtype}; convert it to 8-bit RGB")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    c = img.shape[2]
    if c == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if c == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if c == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if c == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"image {path}: unsupported channel count {c}")


def decode_mask(path: str, image_size: int, interpolation: str = "area") -> np.ndarray:
    """Decode a mask to (S, S) uint8 in {0, 1} (any channel > half intensity = inside)."""
    import cv2

    img = decode_image(path, None)
    grey = img.max(axis=2)
    if grey.shape != (image_size, image_size):
        grey = cv2.resize(grey, (image_size, image_size), interpolation=_cv2_interp(interpolation))
    return (grey > 127).astype(np.uint8)


def _key(kind: str, hashes: Sequence[str], image_size: int, interpolation: str, stain: str = "") -> str:
    head = {"v": CACHE_VERSION, "kind": kind, "size": int(image_size), "interp": interpolation}
    if stain:  # plain entries keep the key they always had
        head["stain"] = stain
    d = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for h in hashes:
        d.update(h.encode() + b"\n")
    return d.hexdigest()[:24]


def _build(kind: str, paths: list[str], hashes: list[str], image_size: int, interpolation: str,
           cache_dir: Path, workers: int | None, progress: bool, stain: str = "") -> Path:
    key = _key(kind, hashes, image_size, interpolation, stain)
    stem = f"{kind}-{stain + '-' if stain else ''}{image_size}px-{key}"
    npy = cache_dir / f"{stem}.npy"
    if npy.exists():
        return npy
    cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp(cache_dir)  # half-built entries of killed processes (they can be large)
    n = len(paths)
    shape = (n, image_size, image_size, 3) if kind == "images" else (n, image_size, image_size)
    tmp = cache_dir / f".{stem}.npy{TMP_MARK}{os.getpid()}-{time.time_ns()}"
    t0 = time.perf_counter()
    # the header through numpy, the images by plain sequential writes: no mapping of the growing file, so the
    # builder's resident memory stays flat however many images there are (mapped pages would count in its RSS)
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
    with open(tmp, "rb") as f:
        v = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if v == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        offset = f.tell()
    item = int(np.prod(shape[1:]))
    try:
        def decode(p):
            if kind == "images":
                return decode_image(p, image_size, interpolation)
            return decode_mask(p, image_size, interpolation) if p else None

        unchanged: list[dict] = []  # rows the stain method left as they were (with why), for the index

        def job(ip):
            i, p = ip
            try:
                img = decode(p)
            except (ImageTooLargeError, ImageReadError) as e:  # name the row of the list (= the manifest row)
                raise type(e)(f"row {i + 1}: {e}") from None
            if stain and img is not None:
                rep = StainReport()
                img = normalize_stain(img, stain, report=rep)
                if rep.unchanged:
                    unchanged.append({"row": i, "path": p, "reason": rep.reasons[0]})
            return img
        workers = workers or min(4, os.cpu_count() or 1)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"caching {kind} at {image_size}px", unit="img")
        # bounded in-flight work: decode in chunks so memory does not grow with N
        chunk = max(32, 8 * workers)
        with ThreadPoolExecutor(workers) as ex, open(tmp, "r+b") as out:
            out.seek(offset)
            for s in range(0, n, chunk):
                for img in ex.map(job, zip(range(s, n), paths[s:s + chunk])):
                    out.write(np.zeros(item, np.uint8).tobytes() if img is None
                              else np.ascontiguousarray(img, dtype=np.uint8).tobytes())
                if bar is not None:
                    bar.update(min(chunk, n - s))
            if out.tell() != offset + n * item:
                raise RuntimeError(f"cache {tmp}: wrote {out.tell() - offset} bytes, expected {n * item}")
            out.flush()
            os.fsync(out.fileno())
        if bar is not None:
            bar.close()
        index = {"version": CACHE_VERSION, "kind": kind, "n": n, "image_size": image_size,
                 "interpolation": interpolation, "shape": list(shape), "dtype": "uint8", "key": key,
                 "build_seconds": round(time.perf_counter() - t0, 3), "stain": stain,
                 "stain_unchanged": sorted(unchanged, key=lambda r: r["row"]),
                 "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "files": [{"path": p, "sha256": h} for p, h in zip(paths, hashes)]}
        write_text_atomic(cache_dir / f"{stem}.json", json.dumps(index, indent=1) + "\n")
        os.replace(tmp, npy)  # the .npy appears only when complete
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, Exception) and is_disk_full(e, cache_dir):
            raise DiskFullError(npy) from e  # names the cache file and the free space
        raise
    return npy


def cache_path(paths: Iterable[str], image_size: int, *, cache_dir: str | os.PathLike | None = None,
               interpolation: str = "area", kind: str = "images", hashes: Sequence[str] | None = None,
               stain: str = "") -> Path:
    """Where the cache entry for these files would live (it may not exist yet)."""
    paths = [os.fspath(p) for p in paths]
    hashes = list(hashes) if hashes is not None else hash_files([p for p in paths])
    cd = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cd / (f"{kind}-{stain + '-' if stain else ''}{image_size}px-"
                 f"{_key(kind, hashes, image_size, interpolation, stain)}.npy")


def load_images(paths: Iterable[str | os.PathLike], image_size: int, *, cache_dir: str | os.PathLike | None = None,
                interpolation: str = "area", hashes: Sequence[str] | None = None, workers: int | None = None,
                progress: bool = False, stain: str = "") -> np.memmap:
    """All images as a read-only uint8 memmap (N, S, S, 3), RGB; decoded once and cached on disk.

    ``hashes``: the files' sha256 (e.g. ``df["sha256"]`` from :func:`glomlib.data.manifest.read_manifest`)
    to skip re-hashing; otherwise they are computed (fast, memoised per process). ``stain``: "" or a method of
    :mod:`glomlib.data.stain` — the images stain-normalised, cached as their own entry (:func:`stain_report`).
    """
    if stain not in STAIN_METHODS:
        raise ValueError(f"stain_normalize={stain!r}: choose one of {list(STAIN_METHODS)} ('' = off).")
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("load_images: no image paths given")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, not {image_size!r}")
    _cv2_interp(interpolation)
    hashes = list(hashes) if hashes is not None else hash_files(paths)
    if len(hashes) != len(paths):
        raise ValueError(f"{len(hashes)} hashes for {len(paths)} paths")
    cd = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    npy = _build("images", paths, hashes, int(image_size), interpolation, cd, workers, progress, stain)
    return np.load(npy, mmap_mode="r")


def stain_report(images: np.memmap) -> StainReport:
    """What the stain normalisation of a :func:`load_images` entry did (from the entry's index): the method, the
    number of images, and the rows it left unchanged with the reason."""
    index = json.loads(Path(images.filename).with_suffix(".json").read_text())
    rows = index.get("stain_unchanged", [])
    return StainReport(index.get("stain", ""), int(index["n"]), [r["row"] for r in rows], [r["reason"] for r in rows])


def load_masks(mask_paths: Iterable[str | os.PathLike], image_size: int, *,
               cache_dir: str | os.PathLike | None = None, interpolation: str = "area",
               workers: int | None = None, progress: bool = False) -> np.memmap:
    """Masks as a read-only uint8 memmap (N, S, S) with values 0/1; cached like images.

    An empty path gives an all-zero mask; the returned array has ``.present`` (bool (N,)) telling which
    rows had a mask file.
    """
    paths = ["" if p is None or (isinstance(p, float) and np.isnan(p)) else os.fspath(p) for p in mask_paths]
    if not paths:
        raise ValueError("load_masks: no mask paths given")
    present = np.array([bool(p) for p in paths])
    real = [p for p in paths if p]
    h = iter(hash_files(real))
    hashes = [next(h) if p else "-" for p in paths]
    cd = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    npy = _build("masks", paths, hashes, int(image_size), interpolation, cd, workers, progress)
    arr = np.load(npy, mmap_mode="r")
    arr.present = present
    return arr
