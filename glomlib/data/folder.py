"""The rows of a manifest for a folder of patches laid out ``<root>/<label>/[<sub-folders>/]<slide>-<index>.png``.

The label is the name of the folder directly under the root, kept exactly; sub-folders below it are walked (and
said so). Hidden files and folders, macOS ``._*`` files and ``__MACOSX`` folders are ignored; everything else
that is not read (files directly under the root, folders without images, other files) is named in the notes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from glomlib.data.manifest import IMAGE_EXTENSIONS
from glomlib.data.manifest.labels import not_a_class_name

DEFAULT_SLIDE_REGEX = r"^(?P<slide>.+)-[^-]+$"
MACOS_JUNK = "__MACOSX"


def _ignored(rel: Path) -> bool:
    """Hidden (``.x``, macOS ``._x``) or macOS archive metadata, at any depth."""
    return any(part.startswith(".") or part == MACOS_JUNK for part in rel.parts)


def _group(rx: re.Pattern, m: re.Match, name: str) -> str:
    return m.group(name) if name in rx.groupindex else m.group(1 if rx.groups else 0)


def _examples(paths: list[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (f", ... ({len(paths)} in all)" if len(paths) > n else "")


def _label_files(d: Path, exts: tuple[str, ...], seen: dict[str, list[str]]) -> list[Path]:
    """The images under label folder ``d`` (sub-folders walked); what is not read goes into ``seen``."""
    images = []
    for f in sorted(d.rglob("*")):
        rel = f.relative_to(d.parent)
        if _ignored(f.relative_to(d)):
            seen["ignored"].append(str(rel))
        elif f.is_file() and f.suffix.lower() in exts:
            images.append(f)
            if f.parent != d:
                seen["nested"].append(str(rel.parent))
        elif f.is_file():
            seen["other"].append(str(rel))
    return images


def _notes(seen: dict[str, list[str]]) -> list[str]:
    nested = sorted(set(seen["nested"]))
    texts = {
        "loose": "file(s) directly under the root were skipped (images go into <root>/<label>/)",
        "empty": "folder(s) hold no images and were skipped",
        "other": "file(s) that are not images were skipped",
        "ignored": "hidden or macOS metadata file(s) (.*, ._*, __MACOSX) were ignored",
    }
    out = [f"{len(seen[k])} {t}: {_examples(seen[k])}" for k, t in texts.items() if seen[k]]
    if nested:
        out.append(
            f"images in {len(nested)} sub-folder(s) were read with the label of the folder directly under the root: {_examples(nested)}"
        )
    return out


def scan_folder(
    root: str | os.PathLike,
    *,
    slide_regex: str = DEFAULT_SLIDE_REGEX,
    center_regex: str | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> tuple[pd.DataFrame, list[str]]:
    """``(rows, notes)`` for ``<root>/<label>/**/*.<ext>``: label = the folder name, slide = the ``slide`` group
    (or group 1) of ``slide_regex`` on the file name without extension, center = the ``center`` group (or 1) of
    ``center_regex`` searched in the slide. ValueError lists every unmatched file name, or says why no rows."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected <root>/<label>/*.png")
    rx, crx = re.compile(slide_regex), re.compile(center_regex) if center_regex else None
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    seen: dict[str, list[str]] = {k: [] for k in ("loose", "empty", "other", "ignored", "nested")}
    rows, bad = [], []
    for d in sorted(root.iterdir()):
        if _ignored(Path(d.name)):
            seen["ignored"].append(d.name)
            continue
        images = _label_files(d, exts, seen) if d.is_dir() else []
        if not d.is_dir():
            seen["loose"].append(d.name)
        elif not images:
            seen["empty"].append(d.name + "/")
        for f in images:
            m = rx.match(f.stem)
            if not m:
                bad.append(str(f))
                continue
            row = {"path": str(f), "label": d.name, "slide": _group(rx, m, "slide")}
            if crx is not None:
                cm = crx.search(row["slide"])
                row["center"] = _group(crx, cm, "center") if cm else ""
            rows.append(row)
    if bad:
        raise ValueError(
            f"{len(bad)} file name(s) do not match the slide pattern {slide_regex!r} (default: '<slide>-<index>'):\n"
            + "\n".join("  " + b for b in bad)
            + "\nRename them or pass --slide-regex with a (?P<slide>...) group."
        )
    if not rows:
        raise ValueError(
            f"no images ({', '.join(exts)}) found in label folders under {root}; expected <root>/<label>/*.png"
        )
    return pd.DataFrame(rows), _notes(seen)


def label_folder_problems(labels: list[str]) -> list[str]:
    """Label folders whose names cannot be kept as class names exactly (spaces around them, 0/1, true/false)."""
    out = []
    for name in labels:
        why = "has spaces around it (they are dropped when a manifest is read)" if name != name.strip() else ""
        why = why or (f"is {not_a_class_name(name)}, not a class name" if not_a_class_name(name) else "")
        if why:
            out.append(f"label folder {name!r} {why}; rename it to the class name (e.g. GS, nonGS)")
    return out
