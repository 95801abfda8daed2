"""Patch cache benchmark on the real data: images/s for building the cache, reading it back, and decoding
the PNGs each time (what a loader without a cache does every epoch), side by side in one run.

    flock /tmp/glomlib-cpu.lock .venv/bin/python benchmarks/cache.py [--manifest M] [--sizes 224 96]

The cache is built in a fresh temporary folder (a cold build, nothing reused); file reads come from the OS
page cache after the first pass, as they would in a training run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def timed(fn, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    from glomlib.core.paths import DEFAULT_MANIFEST

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    ap.add_argument("--positive-label", default="GS")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the read/decode timings")
    args = ap.parse_args(argv)

    from glomlib.core.paths import chdir_project_root
    from glomlib.data.cache import decode_image, load_images
    from glomlib.data.manifest import _HASH_MEMO, hash_files, read_manifest
    from glomlib.data.public import ensure_default_manifest

    chdir_project_root()
    df = read_manifest(ensure_default_manifest(args.manifest), positive_label=args.positive_label)
    paths = list(df["path"])
    n = len(paths)
    for p in paths:  # warm the OS page cache so every variant reads the same way
        with open(p, "rb") as f:
            f.read()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}")
    print(f"data: {n} PNG images from {args.manifest}; decode workers (threads): {args.workers}")
    _HASH_MEMO.clear()
    t_hash = timed(lambda: hash_files(paths, workers=args.workers), 1)
    print(f"content hashing for the cache key: {n / t_hash:,.0f} images/s ({t_hash:.2f} s)")
    print()
    hdr = (
        f"{'size':>5} {'build cache':>13} {'read cache':>13} {'load 2nd run':>13} {'decode 1 thr':>13} "
        f"{f'decode {args.workers} thr':>13} {'read/decode1':>13} {'read/decodeN':>13}"
    )
    print("images/s" + " " * (len(hdr) - 8))
    print(hdr)
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="glomlib-bench-") as cd:
            t_build = timed(lambda: load_images(paths, size, cache_dir=cd, workers=args.workers), 1)
            arr = load_images(paths, size, cache_dir=cd)

            def read_all():  # read every image from the memmap into RAM, as a loader would
                s = 0
                for i in range(0, n, 64):
                    s += int(np.asarray(arr[i : i + 64]).sum(dtype=np.uint64) & 1)
                return s

            t_read = timed(read_all, args.repeats)

            def load2():  # what a second run does: hash the files (memo cleared), open the cache, read it
                _HASH_MEMO.clear()
                np.asarray(load_images(paths, size, cache_dir=cd)).sum()

            t_load2 = timed(load2, args.repeats)

            def decode1():
                for p in paths:
                    decode_image(p, size)

            def decodeN():
                with ThreadPoolExecutor(args.workers) as ex:
                    list(ex.map(lambda p: decode_image(p, size), paths))

            t_dec1 = timed(decode1, args.repeats)
            t_decN = timed(decodeN, args.repeats)
            r = [n / t for t in (t_build, t_read, t_load2, t_dec1, t_decN)]
            print(
                f"{size:>5} {r[0]:>13,.0f} {r[1]:>13,.0f} {r[2]:>13,.0f} {r[3]:>13,.0f} {r[4]:>13,.0f} "
                f"{r[1] / r[3]:>12,.0f}x {r[1] / r[4]:>12,.0f}x"
            )
            mb = arr.nbytes / 2**20
            print(
                f"      cache file {mb:.1f} MiB; 'load 2nd run' = load_images() again: re-hash every file for the "
                f"key, open the memmap, read all (no decoding)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
