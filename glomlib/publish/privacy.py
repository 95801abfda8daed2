"""Pseudonyms: stable keyed identifiers that replace slide, patient and file names where data enters a shareable run."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from glomlib.data.manifest import read_manifest, write_manifest
from glomlib.publish.steps import copy_license


def pseudonym(identifier: str, key: bytes, prefix: str = "slide") -> str:
    """A stable pseudonym for an identifier: ``<prefix>-`` + 6 hex digits of HMAC-SHA256(key, identifier)."""
    return f"{prefix}-" + hmac.new(key, identifier.encode(), hashlib.sha256).hexdigest()[:6]


def pseudonym_key(project_root: Path) -> bytes:
    """The key behind the pseudonyms: ``$GLOMLIB_PSEUDONYM_KEY``, else ``data/.pseudonym-key`` (created once)."""
    env = os.environ.get("GLOMLIB_PSEUDONYM_KEY")
    if env:
        return env.encode()
    path = project_root / "data" / ".pseudonym-key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def _link(real: str, link: Path) -> None:
    """``link`` -> the same file as ``real``: a hard link (its name reveals nothing, even to realpath), else a
    symbolic link (other disk / file system without hard links)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(real, link)
    except OSError:
        os.symlink(os.path.abspath(real), link)


def _linked(real: str, folder: Path, name: str) -> str:
    """A link ``folder/<name><ext>`` to ``real`` (absolute: write_manifest makes it relative), or "" for no file."""
    if not real:
        return ""
    link = folder / f"{name}{Path(real).suffix.lower()}"
    _link(real, link)
    return str(link.absolute())


def write_pseudonymised_manifest(src: Path, dest: Path, key: bytes, positive_label: str) -> Path:
    """A manifest whose slide, patient AND file names are pseudonyms, so that nothing downstream (tables, figures
    captioned with file names, logs, notebook outputs) can show a real identifier.

    Every image (and mask) gets a link ``<slide pseudonym>-<n><ext>`` in ``<dest stem>-files/images/`` (and
    ``masks/``), not a copy; the mapping to the real names goes to ``<dest stem>-mapping.csv`` in the run folder,
    outside any report."""
    import pandas as pd

    df = read_manifest(src, positive_label=positive_label).copy()
    has_patient = bool((df["patient"] != df["slide"]).any())
    files = dest.parent / f"{dest.stem}-files"
    if files.exists():
        raise FileExistsError(f"{files} already exists; pseudonymised data is written once per run folder.")
    slide_ps = [pseudonym(str(v), key, "slide") for v in df["slide"]]
    if len(set(slide_ps)) != df["slide"].nunique():
        raise ValueError("two slides got the same pseudonym; use another pseudonym key ($GLOMLIB_PSEUDONYM_KEY)")
    patient_ps = [pseudonym(str(v), key, "patient") for v in df["patient"]] if has_patient else slide_ps
    names = [f"{s}-{n}" for s, n in zip(slide_ps, pd.Series(slide_ps).groupby(slide_ps).cumcount())]
    out = df.copy()
    out["path"] = [_linked(str(r), files / "images", n) for r, n in zip(df["path"], names)]
    out["mask"] = [_linked(str(r), files / "masks", n) for r, n in zip(df["mask"], names)]
    out["slide"], out["patient"] = slide_ps, patient_ps
    mapping = pd.DataFrame(
        {
            "path": [os.path.relpath(p, dest.parent) for p in out["path"]],
            "real_path": df["path"].astype(str),
            "slide": slide_ps,
            "real_slide": df["slide"],
            "patient": patient_ps,
            "real_patient": df["patient"],
            "mask": [os.path.relpath(m, dest.parent) if m else "" for m in out["mask"]],
            "real_mask": df["mask"].astype(str),
        }
    )
    cols = ["path", "label", "slide"] + (["patient"] if has_patient else [])
    cols += [c for c in ("center", "split", "mask") if (df[c] != "").any()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    mapping.to_csv(dest.parent / f"{dest.stem}-mapping.csv", index=False)
    write_manifest(out[cols], dest)
    copy_license(src, dest)
    return dest
