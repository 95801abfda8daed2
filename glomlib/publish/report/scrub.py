"""Scrubbing text for sharing: absolute paths, user and host names and (optionally) slide and patient identifiers.

Paths are made relative (project root -> ``.``, the data folder -> ``[data]``, ``$HOME`` -> ``~``, any other absolute
path -> ``[…]/<file name>``). Pseudonyms are stable (keyed HMAC, e.g. ``slide-7f3a2c``); the key lives in
``$GLOMLIB_PSEUDONYM_KEY`` or ``data/.pseudonym-key`` and is never written into a report."""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from glomlib.publish.privacy import pseudonym

_GENERIC_ABS = re.compile(
    r"(?<![\w.:/~\]\[-])(?:/(?:home|root|Users|tmp|var|work|mnt|data|srv|opt|scratch|media|private|gpfs|nfs|"
    r"lustre|cluster|usr|etc|run)(?:/[\w.@+-]+)+|[A-Za-z]:\\(?:[\w .@+-]+\\)*[\w.@+-]+)"
)


_DATA_URI = re.compile(r"(data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+)")


_PSEUDONYM = re.compile(r"^(slide|patient)-[0-9a-f]{6}$")


class Scrubber:
    """Replaces absolute paths, user and host names (and optionally slide identifiers) in text."""

    def __init__(
        self,
        project_root: Path,
        data_dirs: Iterable[Path] = (),
        slides: Iterable[str] = (),
        patients: Iterable[str] = (),
        key: bytes | None = None,
    ):
        home = Path.home()
        pairs: list[tuple[str, str]] = []
        for d in data_dirs:
            d = Path(d).resolve()
            if not str(d).startswith(str(project_root.resolve()) + os.sep):
                pairs.append((str(d), "[data]"))
        root = str(project_root.resolve())
        pairs += [(root, "."), (str(project_root.resolve().parent), "..")]
        if str(home) not in ("/", ""):
            pairs.append((str(home), "~"))
        # longest first, so a folder inside another is replaced by its own token
        self.pairs = sorted({(a, b) for a, b in pairs if a and a != "/"}, key=lambda ab: -len(ab[0]))
        # a prefix matches only as a whole path component: /work/main/x yes, /work/main2 no
        self._patterns: list[tuple[re.Pattern, str]] = []
        for a, b in self.pairs:
            self._patterns.append((re.compile(re.escape(a) + "/"), "" if b == "." else b + "/"))
            self._patterns.append((re.compile(re.escape(a) + r"(?![\w.@+-])"), b))
        self.user = getpass.getuser()
        self.host = socket.gethostname()
        self.pseudonyms: dict[str, str] = {}
        if key is not None:
            slides = [s for s in slides if not _PSEUDONYM.match(str(s))]
            patients = [p for p in patients if not _PSEUDONYM.match(str(p))]
            for s in slides:
                self.pseudonyms[str(s)] = pseudonym(str(s), key, "slide")
            for p in patients:
                self.pseudonyms.setdefault(str(p), pseudonym(str(p), key, "patient"))
        ids = sorted((s for s in self.pseudonyms if s), key=len, reverse=True)
        self._ids = (
            re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, ids)) + r")(?![A-Za-z0-9])") if ids else None
        )

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if "base64," in text:  # never touch embedded images (base64 may contain '/tmp/...'-like runs)
            parts = _DATA_URI.split(text)
            return "".join(p if i % 2 else self._scrub(p) for i, p in enumerate(parts))
        return self._scrub(text)

    def replace_paths(self, text: str) -> str:
        for pattern, token in self._patterns:
            text = pattern.sub(lambda _m, t=token: t, text)
        return text

    def _scrub(self, text: str) -> str:
        text = self.replace_paths(text)
        text = _GENERIC_ABS.sub(lambda m: "[…]/" + re.split(r"[\\/]", m.group(0))[-1], text)
        for name in {self.user, self.host} - {""}:
            # in paths/addresses always; as a bare word only when it is not a common word
            text = re.sub(rf"(?<=[/@\\]){re.escape(name)}(?![\w-])|(?<![\w-]){re.escape(name)}(?=@)", "[…]", text)
            if name not in {"root", "user", "admin", "jovyan", "runner", "ubuntu", "vm", "localhost"}:
                text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "[…]", text)
        if self._ids is not None:
            text = self._ids.sub(lambda m: self.pseudonyms[m.group(1)], text)
        return text


def manifest_info(manifest: Path) -> dict[str, Any]:
    """Slide and patient identifiers and the images' common folder, read from the raw manifest CSV
    (no decoding or hashing; a missing slide column falls back to the file names' ``<slide>-<n>`` stem)."""
    import pandas as pd

    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception:
        return {"slides": [], "patients": [], "image_root": None}
    paths = [
        os.path.normpath(p if os.path.isabs(p) else os.path.join(manifest.parent, p)) for p in df.get("path", []) if p
    ]
    if "slide" in df:
        slides = set(df["slide"])
    else:
        slides = {Path(p).stem.rsplit("-", 1)[0] for p in paths}
    patients = set(df["patient"]) if "patient" in df else set()
    try:
        image_root = Path(os.path.commonpath(paths)) if paths else None
    except ValueError:
        image_root = None
    return {
        "slides": sorted(s for s in slides if s),
        "patients": sorted(p for p in patients if p),
        "image_root": image_root,
    }


def scrub_html_literals(body: str, scrub: Any) -> str:
    """Last line of defence on the finished page: the known path prefixes, outside embedded images."""
    if not hasattr(scrub, "replace_paths"):
        return body
    parts = _DATA_URI.split(body)
    return "".join(p if i % 2 else scrub.replace_paths(p) for i, p in enumerate(parts))
