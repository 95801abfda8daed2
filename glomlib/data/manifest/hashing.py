"""Content hashes of the files a manifest names, and the data fingerprint built from them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes (memoised per process by path, size and mtime)."""
    p = os.fspath(path)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        with open(p, "rb") as f:
            _HASH_MEMO[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _HASH_MEMO[key]


def threaded(fn, items: list, workers: int | None = None) -> list:
    """``[fn(x) for x in items]``, on a few threads when there are many (hashing and decoding release the GIL)."""
    workers = workers or min(4, os.cpu_count() or 1)
    if len(items) <= 16 or workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def hash_files(paths: Iterable[str], workers: int | None = None) -> list[str]:
    """sha256 of many files (threaded)."""
    return threaded(file_sha256, list(paths), workers)


def data_fingerprint(df: pd.DataFrame) -> str:
    """A stable 16-hex-digit fingerprint of the data: file contents + label, slide, patient, centre and split of
    every row (independent of row order and of where the files live). Uses ``df["sha256"]`` when present. The
    centre counts: it defines the leave-one-centre-out folds, so a resume after it changed must be refused."""
    hashes = list(df["sha256"]) if "sha256" in df.columns else hash_files(df["path"])
    cols = [c for c in ("label", "slide", "patient", "center", "split") if c in df.columns]
    parts = sorted("\t".join([h] + [str(df[c].iloc[i]) for c in cols]) for i, h in enumerate(hashes))
    d = hashlib.sha256("\t".join(cols).encode())
    for p in parts:
        d.update(p.encode() + b"\n")
    return d.hexdigest()[:16]
