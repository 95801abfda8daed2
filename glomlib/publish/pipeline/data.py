"""The data a pipeline run uses: the manifest (the default one is built on demand), its fingerprint, a subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.data.manifest import data_fingerprint as _fingerprint
from glomlib.data.manifest import read_manifest, write_manifest
from glomlib.data.public import ensure_default_manifest
from glomlib.publish.steps import PipelineError, abs_in, copy_license


def ensure_manifest(data: str | None, root: Path) -> Path:
    path = abs_in(data or DEFAULT_MANIFEST, root)
    if path.is_file():
        return path
    if data is None or Path(data) == DEFAULT_MANIFEST:
        return Path(ensure_default_manifest(path)).resolve()
    raise PipelineError(f"Manifest {path} does not exist; pass --data MANIFEST.csv (see data/README.md).")


def data_fingerprint(path: Path, positive_label: str) -> str:
    """Fingerprint of the manifest's data (file contents + labels); validates the manifest on the way."""
    return _fingerprint(read_manifest(path, positive_label=positive_label))


def _pick_slides(df: Any, n_slides: int) -> list[str]:
    """Round-robin over centres, slides holding both labels first."""
    stats = df.groupby("slide")["y"].agg(lambda y: len(set(y)))
    by_centre: dict[str, list[str]] = {}
    for s in sorted(df["slide"].unique(), key=lambda s: (-stats[s], s)):
        by_centre.setdefault(str(df.loc[df["slide"] == s, "center"].iloc[0]), []).append(s)
    picked: list[str] = []
    while len(picked) < n_slides and any(by_centre.values()):
        for c in sorted(by_centre):
            if by_centre[c] and len(picked) < n_slides:
                picked.append(by_centre[c].pop(0))
    return picked


def write_subset_manifest(src: Path, dest: Path, subset: dict[str, Any], positive_label: str) -> Path:
    """A small, deterministic slice of ``src``: ``slides`` slides, at most ``per_slide_label`` images per slide
    and label. Paths are written relative to ``dest``'s folder so no absolute path travels into the notebooks."""
    import numpy as np
    import pandas as pd

    df = read_manifest(src, positive_label=positive_label)
    per = int(subset.get("per_slide_label", 4))
    rng = np.random.default_rng(int(subset.get("seed", 0)))
    parts = []
    for s in _pick_slides(df, int(subset.get("slides", 6))):
        for _, g in df[df["slide"] == s].groupby("y"):
            parts.append(g.iloc[sorted(rng.permutation(len(g))[:per])])
    sub = pd.concat(parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    same_patient = (sub["patient"] == sub["slide"]).all()
    extra = [c for c in ("patient", "center", "mask") if (sub[c] != "").any() and not (c == "patient" and same_patient)]
    write_manifest(sub[["path", "label", "slide"] + extra], dest)
    copy_license(src, dest)
    return dest
