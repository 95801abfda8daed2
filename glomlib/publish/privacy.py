"""Pseudonyms: stable keyed identifiers that replace slide and patient IDs before data enters a shareable run."""

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


def write_pseudonymised_manifest(src: Path, dest: Path, key: bytes, positive_label: str) -> Path:
    """A copy of ``src`` whose slide (and patient) identifiers are stable pseudonyms, so that the notebooks'
    tables and figures never see the real identifiers. File names are not changed (the images are not copied)."""
    df = read_manifest(src, positive_label=positive_label).copy()
    has_patient = bool((df["patient"] != df["slide"]).any())
    df["slide"] = [pseudonym(str(v), key, "slide") for v in df["slide"]]
    df["patient"] = [pseudonym(str(v), key, "patient") for v in df["patient"]] if has_patient else df["slide"]
    cols = ["path", "label", "slide"] + (["patient"] if has_patient else []) + \
        [c for c in ("center", "split", "mask") if (df[c] != "").any()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(df[cols], dest)
    for extra in ("LICENSE", "CITATION", "CITATION.txt", "CITATION.cff", "README.md"):
        if (src.parent / extra).is_file() and not (dest.parent / extra).exists():
            shutil.copy2(src.parent / extra, dest.parent / extra)
    return dest
