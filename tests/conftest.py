"""Shared test fixtures (owner: engineer A).

* ``shared_data``: path to the real glomeruli-pas mirror (``../shared/data/glomeruli-pas`` beside the repo
  root). Skips when it is absent, EXCEPT when ``CI=true``: then a missing mirror fails the test.
* ``real_manifest``: a manifest of the real data built with ``fetch_glomeruli_pas`` in a temp folder
  (session-scoped; positive label ``GS``).
* ``make_manifest``: factory building a tiny generated dataset (PNG images + masks + manifest.csv) in a
  fresh temp folder; positives (default label ``M1``) carry a dark central blob so a model can learn them.
* ``tiny_manifest``: ``make_manifest()`` with defaults: 6 slides x 4 images, 16 px, labels M1/M0,
  2 centres, masks, and a ``dataset.json`` naming M1 positive.
* ``smoke_report``: the smoke profile run once on the real data for the whole session (notebooks 01..05, the
  report rendered): ``{"run", "report", "base", "seconds"}``. Shared by the pipeline, reader and browser tests so
  CI runs that pipeline once. ``GLOMLIB_SMOKE_REPORT=reports/<run>`` reuses a finished smoke run instead (its run
  folder is ``runs/<run>`` beside it): re-render a page, then run the reader and browser tests in seconds.
* ``build_tiny_mirror(root)``: a fake glomeruli-pas tree (6 images + masks, LICENSE) and a sums file listing
  one extra absent image; returns the sums path.
* ``write_png``: ``write_png(path, array)`` writes an RGB/grey/RGBA uint8/uint16 array as PNG.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests never reach for the network: ImageNet ResNet weights that are not cached are refused, not downloaded.
os.environ.setdefault("GLOMLIB_OFFLINE", "1")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "glomeruli-pas"


def _write_png(path, arr) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 3:
        a = a[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def write_png():
    return _write_png


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "Patches" / "Raw").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data missing at {SHARED_DATA} and CI=true: real-data tests must run in CI")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_manifest(shared_data, tmp_path_factory) -> Path:
    from glomlib.data.public import fetch_glomeruli_pas

    out = tmp_path_factory.mktemp("glomeruli-pas")
    return fetch_glomeruli_pas(out=out, mirror=shared_data, progress=False, verbose=False)


@pytest.fixture(scope="session")
def smoke_report(real_manifest, tmp_path_factory) -> dict:
    import time

    from glomlib.publish.pipeline import STEMS, run_pipeline

    if not all((REPO_ROOT / "notebooks" / f"{s}.ipynb").is_file() for s in STEMS):
        if os.environ.get("CI") == "true":
            pytest.fail("notebooks 01..05 missing")
        pytest.skip("not all notebooks 01..05 exist yet")
    reuse = os.environ.get("GLOMLIB_SMOKE_REPORT")
    if reuse:
        report = Path(reuse).resolve()
        return {
            "run": report.parent.parent / "runs" / report.name,
            "report": report,
            "base": report.parent.parent,
            "seconds": 0.0,
        }
    base = tmp_path_factory.mktemp("smoke")
    t0 = time.monotonic()
    run = run_pipeline(
        "smoke",
        data=str(real_manifest),
        runs_root=base / "runs",
        reports_root=base / "reports",
        project_root=REPO_ROOT,
    )
    seconds = time.monotonic() - t0
    print(f"smoke profile: {seconds:.0f} s")
    return {"run": run, "report": base / "reports" / run.name, "base": base, "seconds": seconds}


def build_tiny_dataset(
    root,
    *,
    n_slides=6,
    per_slide=4,
    size=16,
    labels=("M1", "M0"),
    centers=("A", "B"),
    masks=True,
    seed=0,
    extra_columns=None,
    sidecar=True,
) -> Path:
    """Write tiny PNGs under ``root/images/<label>/`` (+ masks) and ``root/manifest.csv``; return its path.

    Each slide mixes both labels (alternating), so grouped stratified folds are possible. ``sidecar``: also
    write ``root/dataset.json`` naming ``labels[0]`` positive (as ``glomlib data fetch`` does)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    for s in range(n_slides):
        slide = f"S{s:02d}"
        center = centers[s % len(centers)]
        for k in range(per_slide):
            label = labels[(s + k) % len(labels)]
            img = rng.integers(150, 230, size=(size, size, 3), dtype=np.uint8)
            if label == labels[0]:
                img[blob] = rng.integers(40, 90, size=(int(blob.sum()), 3), dtype=np.uint8)
            name = f"{slide}-{k}.png"
            p = _write_png(root / "images" / label / name, img)
            row = {"path": os.path.relpath(p, root), "label": label, "slide": slide, "center": center}
            if masks:
                m = _write_png(root / "masks" / name, (blob * 255).astype(np.uint8))
                row["mask"] = os.path.relpath(m, root)
            if extra_columns:
                row.update({c: f(s, k) for c, f in extra_columns.items()})
            rows.append(row)
    out = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    if sidecar:
        from glomlib.data.manifest import write_dataset_info

        write_dataset_info(out, labels[0], labels[1] if len(labels) > 1 else "")
    return out


def build_tiny_mirror(root, n_per_label=3) -> Path:
    """A fake glomeruli-pas tree + sums file (listing one extra absent image); returns the sums path."""
    rng = np.random.default_rng(0)
    sums = []
    for label in ("GS", "nonGS"):
        for i in range(n_per_label):
            name = f"{'SAS' if i % 2 else 'VUHSK'}_{label}_001-{i}.png"
            for sub in (f"Images/{label}", "Masks"):
                rel = f"Patches/Raw/{sub}/{name}"
                p = _write_png(
                    root / rel,
                    rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                    if sub != "Masks"
                    else np.zeros((8, 8), np.uint8) + i,
                )
                sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}")
    sums.append(f"{'0' * 64}  Patches/Raw/Images/GS/ABSENT_1_001-0.png")
    (root / "LICENSE").write_text("test license text\n")
    s = root.parent / f"{root.name}.sha256"
    s.write_text("\n".join(sums) + "\n")
    return s


@pytest.fixture
def make_manifest(tmp_path_factory):
    """``make_manifest(**kw) -> Path`` to a fresh tiny manifest (see :func:`build_tiny_dataset` for kw)."""

    def make(**kw):
        return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), **kw)

    return make


@pytest.fixture
def tiny_manifest(make_manifest) -> Path:
    return make_manifest()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never write into the project's data/cache: $GLOMLIB_CACHE points to a session temp folder
    (unless the caller set it)."""
    if os.environ.get("GLOMLIB_CACHE"):
        yield
        return
    os.environ["GLOMLIB_CACHE"] = str(tmp_path_factory.mktemp("glomlib-cache"))
    try:
        yield
    finally:
        os.environ.pop("GLOMLIB_CACHE", None)


@pytest.fixture(autouse=True, scope="session")
def _pseudonym_key():
    """Tests never create data/.pseudonym-key in the project: a fixed key via the environment."""
    old = os.environ.get("GLOMLIB_PSEUDONYM_KEY")
    os.environ["GLOMLIB_PSEUDONYM_KEY"] = "glomlib-test-key"
    yield
    if old is None:
        os.environ.pop("GLOMLIB_PSEUDONYM_KEY", None)
    else:
        os.environ["GLOMLIB_PSEUDONYM_KEY"] = old
