"""Patch cache: decode every image once, resize, keep as a uint8 memory-mapped array on disk.

``load_images(paths, image_size)`` returns a read-only ``np.memmap`` (N, S, S, 3), RGB, uint8, decoded by
:func:`glomlib.data.images.read_rgb`. An entry is keyed by (every file's content hash, in order; size;
interpolation; stain method; format version), so changed image bytes are never served stale and a second run
opens the file without decoding. It is written row by row under a temporary name (memory stays bounded) and
renamed into place when complete: ``<cache_dir>/<kind>-<S>px-<key>.npy`` plus a ``.json`` index (source paths,
hashes, size, interpolation, the rows a stain method left unchanged). Default folder: ``$GLOMLIB_CACHE`` or
``<project root>/data/cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from glomlib.core.io import TMP_MARK, DiskFullError, is_disk_full, sweep_stale_temp, write_text_atomic
from glomlib.data.images import INTERPOLATIONS, ImageReadError, read_mask, read_rgb
from glomlib.data.manifest import hash_files
from glomlib.data.pixels import ImageTooLargeError
from glomlib.data.stain import STAIN_METHODS, StainReport, normalize_stain

CACHE_VERSION = 1
decode_image = read_rgb  # the name the cache calls (tests replace it to watch or break decoding)


def default_cache_dir() -> Path:
    """``$GLOMLIB_CACHE`` or ``<project root>/data/cache``."""
    env = os.environ.get("GLOMLIB_CACHE")
    if env:
        return Path(env).expanduser()
    from glomlib.core.paths import project_root

    return project_root() / "data" / "cache"


def _stem(kind: str, hashes: Sequence[str], image_size: int, interpolation: str, stain: str = "") -> str:
    head = {"v": CACHE_VERSION, "kind": kind, "size": int(image_size), "interp": interpolation}
    if stain:  # plain entries keep the key they always had
        head["stain"] = stain
    d = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for h in hashes:
        d.update(h.encode() + b"\n")
    return f"{kind}-{stain + '-' if stain else ''}{image_size}px-{d.hexdigest()[:24]}"


def _decoder(kind: str, image_size: int, interpolation: str, stain: str, unchanged: list[dict]):
    """``job((row, path)) -> pixels``: decodes (naming the row), stain-normalises, records unchanged rows."""

    def job(ip):
        i, p = ip
        try:
            if kind == "images":
                img = decode_image(p, image_size, interpolation=interpolation)
            else:
                img = read_mask(p, image_size, interpolation=interpolation) if p else None
        except (ImageTooLargeError, ImageReadError) as e:  # name the row of the list (= the manifest row)
            raise type(e)(f"row {i + 1}: {e}") from None
        if stain and img is not None:
            rep = StainReport()
            img = normalize_stain(img, stain, report=rep)
            if rep.unchanged:
                unchanged.append({"row": i, "path": p, "reason": rep.reasons[0]})
        return img

    return job


def _data_offset(tmp: Path, shape: tuple[int, ...]) -> int:
    """Write the .npy header (through numpy) and return where the pixels start. The pixels follow by plain
    sequential writes: no mapping of the growing file, so resident memory stays flat however many images."""
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
    with open(tmp, "rb") as f:
        v = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if v == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        return f.tell()


def _write_rows(tmp: Path, paths: list[str], shape: tuple[int, ...], job, workers: int | None, desc: str | None):
    n, item = len(paths), int(np.prod(shape[1:]))
    offset = _data_offset(tmp, shape)
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = max(32, 8 * workers)  # bounded in-flight work: memory does not grow with N
    bar = None
    if desc:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img")
    with ThreadPoolExecutor(workers) as ex, open(tmp, "r+b") as out:
        out.seek(offset)
        for s in range(0, n, chunk):
            for img in ex.map(job, zip(range(s, n), paths[s : s + chunk])):
                out.write(bytes(item) if img is None else np.ascontiguousarray(img, dtype=np.uint8).tobytes())
            if bar is not None:
                bar.update(min(chunk, n - s))
        if out.tell() != offset + n * item:
            raise RuntimeError(f"cache {tmp}: wrote {out.tell() - offset} bytes, expected {n * item}")
        out.flush()
        os.fsync(out.fileno())
    if bar is not None:
        bar.close()


def _build(
    kind: str,
    paths: list[str],
    hashes: list[str],
    image_size: int,
    interpolation: str,
    cache_dir: Path,
    workers: int | None,
    progress: bool,
    stain: str = "",
) -> Path:
    stem = _stem(kind, hashes, image_size, interpolation, stain)
    npy = cache_dir / f"{stem}.npy"
    if npy.exists():
        return npy
    cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp(cache_dir)  # half-built entries of killed processes (they can be large)
    n = len(paths)
    shape = (n, image_size, image_size, 3) if kind == "images" else (n, image_size, image_size)
    tmp = cache_dir / f".{stem}.npy{TMP_MARK}{os.getpid()}-{time.time_ns()}"
    t0 = time.perf_counter()
    unchanged: list[dict] = []  # rows the stain method left as they were (with why), for the index
    try:
        job = _decoder(kind, image_size, interpolation, stain, unchanged)
        _write_rows(tmp, paths, shape, job, workers, progress and f"caching {kind} at {image_size}px")
        index = {
            "version": CACHE_VERSION,
            "kind": kind,
            "n": n,
            "image_size": image_size,
            "interpolation": interpolation,
            "shape": list(shape),
            "dtype": "uint8",
            "key": stem[-24:],
            "build_seconds": round(time.perf_counter() - t0, 3),
            "stain": stain,
            "stain_unchanged": sorted(unchanged, key=lambda r: r["row"]),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": [{"path": p, "sha256": h} for p, h in zip(paths, hashes)],
        }
        write_text_atomic(cache_dir / f"{stem}.json", json.dumps(index, indent=1) + "\n")
        os.replace(tmp, npy)  # the .npy appears only when complete
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and is_disk_full(e, cache_dir):
            raise DiskFullError(npy) from e  # names the cache file and the free space
        raise
    return npy


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def cache_path(
    paths: Iterable[str],
    image_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    interpolation: str = "area",
    kind: str = "images",
    hashes: Sequence[str] | None = None,
    stain: str = "",
) -> Path:
    """Where the cache entry for these files would live (it may not exist yet)."""
    hashes = list(hashes) if hashes is not None else hash_files([os.fspath(p) for p in paths])
    return _cache_dir(cache_dir) / f"{_stem(kind, hashes, image_size, interpolation, stain)}.npy"


def load_images(
    paths: Iterable[str | os.PathLike],
    image_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    interpolation: str = "area",
    hashes: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = False,
    stain: str = "",
) -> np.memmap:
    """All images as a read-only uint8 memmap (N, S, S, 3), RGB; decoded once and cached on disk.

    ``hashes``: the files' sha256 (e.g. ``df["sha256"]`` of :func:`glomlib.data.manifest.read_manifest`) to skip
    re-hashing. ``stain``: "" or a method of :mod:`glomlib.data.stain`: the images stain-normalised (after
    resizing), cached as their own entry (see :func:`stain_report`).
    """
    if stain not in STAIN_METHODS:
        raise ValueError(f"stain_normalize={stain!r}: choose one of {list(STAIN_METHODS)} ('' = off).")
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("load_images: no image paths given")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer, not {image_size!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
    hashes = list(hashes) if hashes is not None else hash_files(paths)
    if len(hashes) != len(paths):
        raise ValueError(f"{len(hashes)} hashes for {len(paths)} paths")
    npy = _build(
        "images", paths, hashes, int(image_size), interpolation, _cache_dir(cache_dir), workers, progress, stain
    )
    return np.load(npy, mmap_mode="r")


def stain_report(images: np.memmap) -> StainReport:
    """What the stain normalisation of a :func:`load_images` entry did (from the entry's index): the method, the
    number of images, and the rows it left unchanged with the reason."""
    index = json.loads(Path(images.filename).with_suffix(".json").read_text())
    rows = index.get("stain_unchanged", [])
    return StainReport(index.get("stain", ""), int(index["n"]), [r["row"] for r in rows], [r["reason"] for r in rows])


def load_masks(
    mask_paths: Iterable[str | os.PathLike],
    image_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    interpolation: str = "area",
    workers: int | None = None,
    progress: bool = False,
) -> np.memmap:
    """Masks (:func:`glomlib.data.images.read_mask`) as a read-only uint8 memmap (N, S, S) of 0/1, cached like
    images. An empty path gives an all-zero mask; ``.present`` (bool (N,)) tells which rows had a mask file."""
    paths = ["" if p is None or (isinstance(p, float) and np.isnan(p)) else os.fspath(p) for p in mask_paths]
    if not paths:
        raise ValueError("load_masks: no mask paths given")
    h = iter(hash_files([p for p in paths if p]))
    hashes = [next(h) if p else "-" for p in paths]
    npy = _build("masks", paths, hashes, int(image_size), interpolation, _cache_dir(cache_dir), workers, progress)
    arr = np.load(npy, mmap_mode="r")
    arr.present = np.array([bool(p) for p in paths])
    return arr
