"""Pseudonyms: stable keyed identifiers that replace slide, patient and file names where data enters a shareable run."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
from pathlib import Path

from glomlib.data.manifest import read_manifest, write_manifest


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


def write_pseudonymised_manifest(src: Path, dest: Path, key: bytes, positive_label: str) -> Path:
    """A manifest whose slide, patient AND file names are pseudonyms, so that nothing downstream (tables, figures
    captioned with file names, logs, notebook outputs) can show a real identifier.

    Every image (and mask) gets a link named ``<slide pseudonym>-<n><ext>`` in ``<dest stem>-files/images/`` (and
    ``masks/``) beside ``dest``; the manifest points at those links, relative to its folder. The mapping (pseudonym
    -> real slide, patient and file) is written to ``<dest stem>-mapping.csv`` beside it: it stays in the run
    folder, outside any report. The images are not copied (hard links, or symbolic links across disks)."""
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
    counter: dict[str, int] = {}
    new_paths, new_masks, mapping = [], [], []
    for i in range(len(df)):
        s = slide_ps[i]
        k = counter[s] = counter.get(s, -1) + 1
        real = str(df["path"].iat[i])
        img = files / "images" / f"{s}-{k}{Path(real).suffix.lower()}"
        _link(real, img)
        new_paths.append(str(img.absolute()))  # write_manifest makes them relative to the manifest's folder
        m = str(df["mask"].iat[i])
        if m:
            mk = files / "masks" / f"{s}-{k}{Path(m).suffix.lower()}"
            _link(m, mk)
            new_masks.append(str(mk.absolute()))
        else:
            new_masks.append("")
        mapping.append({"path": os.path.relpath(img, dest.parent), "real_path": real, "slide": s, "real_slide": df["slide"].iat[i],
                        "patient": patient_ps[i], "real_patient": df["patient"].iat[i], "mask": os.path.relpath(new_masks[-1], dest.parent) if m else "", "real_mask": m})
    out = df.copy()
    out["path"], out["mask"], out["slide"] = new_paths, new_masks, slide_ps
    out["patient"] = patient_ps
    cols = ["path", "label", "slide"] + (["patient"] if has_patient else []) + \
        [c for c in ("center", "split", "mask") if (df[c] != "").any()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(mapping).to_csv(dest.parent / f"{dest.stem}-mapping.csv", index=False)
    write_manifest(out[cols], dest)
    for extra in ("dataset.json", "LICENSE", "CITATION", "CITATION.txt", "CITATION.cff", "README.md"):
        if (src.parent / extra).is_file() and not (dest.parent / extra).exists():
            shutil.copy2(src.parent / extra, dest.parent / extra)
    return dest
