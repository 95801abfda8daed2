"""Read and validate a patch manifest (CSV), and fingerprint the data it names.

Manifest format (one row per image patch; see ``data/README.md``):

========  ========  ==============================================================================
column    required  meaning
========  ========  ==============================================================================
path      yes       image file; a relative path resolves against the manifest's folder
label     yes*      class name (the positive one is named by ``dataset.json`` or ``positive_label``);
                    may be empty (unlabeled) only with ``require_labels=False`` (*the column may
                    then be absent)
slide     yes       slide (whole-slide image) the patch was cut from; the unit of grouping
patient   no        patient ID; defaults to the slide. Folds are grouped by patient when it differs
center    no        centre / scanner / lab; "" when absent
split     no        "" / ``train`` / ``val`` / ``test`` or a fold number; see :mod:`glomlib.data.splits`
mask      no        binary glomerulus mask image (same file layout rules as ``path``)
========  ========  ==============================================================================

:func:`read_manifest` checks every row and reports EVERY problem at once (row number + file) in one
:class:`ManifestError`; nothing is dropped silently: ``on_error="skip"`` drops the bad rows but writes
them, with their reasons, to ``skipped_out``. Images whose mode is unusual (grey, grey+alpha, RGBA,
palette, 16-bit) are accepted and converted by :mod:`glomlib.data.cache` (grey -> 3 equal channels,
alpha dropped, 16-bit scaled to 8-bit); each such row is reported as a warning.

Which label is positive is a property of the dataset: a ``dataset.json`` beside the manifest (written by
``glomlib data fetch``; e.g. ``{"positive_label": "GS", "negative_label": "nonGS"}``) says so once, and every
step whose ``positive_label`` is ``""`` (the default) reads it from there (:func:`resolve_positive_label`).

This module does not import torch (``glomlib data check`` stays fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from glomlib.core.io import write_csv_atomic, write_text_atomic
from glomlib.data.pixels import over_budget

REQUIRED_COLUMNS = ("path", "label", "slide")
OPTIONAL_COLUMNS = ("patient", "center", "split", "mask")
DEFAULT_POSITIVE = ""  # "": the positive label named by the manifest's dataset.json (see resolve_positive_label)
DEFAULT_NEGATIVE = {"M1": "M0"}  # documented default label pair; other positives infer the negative
DATASET_SIDECAR = "dataset.json"  # beside the manifest: {"positive_label": ..., "negative_label": ..., ...}
SPLIT_WORDS = ("", "train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_COLOR = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


class ManifestError(ValueError):
    """The manifest has problems. ``.problems`` holds every :class:`Problem`; the message lists them all."""

    def __init__(self, message: str, problems: Sequence["Problem"] = ()):
        super().__init__(message)
        self.problems = list(problems)


class ManifestWarning(UserWarning):
    """Something in the manifest was accepted but changed or is worth a look (e.g. a grey image converted)."""


@dataclass
class Problem:
    """One finding. ``row`` is the 1-based data row number (CSV line = row + 1), 0 for whole-file problems."""

    row: int
    file: str
    kind: str  # missing-file, empty-file, truncated, unreadable, mode, label, duplicate-path, ...
    message: str
    severity: str = "error"  # "error" or "warning"
    skippable: bool = True  # may on_error="skip" drop the row instead of failing?

    def format(self) -> str:
        where = f"row {self.row}" if self.row else "manifest"
        f = f" ({self.file})" if self.file else ""
        return f"{where}{f}: {self.message}"


# ------------------------------------------------------------------------------------- dataset sidecar
def dataset_info_path(manifest: str | os.PathLike) -> Path:
    """The ``dataset.json`` that describes the dataset of ``manifest`` (in the manifest's folder)."""
    return Path(manifest).expanduser().resolve().parent / DATASET_SIDECAR


def read_dataset_info(manifest: str | os.PathLike) -> dict:
    """The manifest's ``dataset.json`` as a dict; ``{}`` when there is none."""
    p = dataset_info_path(manifest)
    if not p.is_file():
        return {}
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{p} is not valid JSON ({e}); it should hold e.g. "
                            '{"positive_label": "GS", "negative_label": "nonGS"}.') from None
    if not isinstance(info, dict):
        raise ManifestError(f"{p} must hold a JSON object, e.g. {{\"positive_label\": \"GS\"}}.")
    return info


def write_dataset_info(manifest: str | os.PathLike, positive_label: str, negative_label: str = "",
                       **extra) -> Path:
    """Write ``dataset.json`` beside ``manifest`` (atomically). Identical content is left as is; a sidecar
    naming another positive or negative label is never overwritten (an error says which file)."""
    p = dataset_info_path(manifest)
    info = {"positive_label": str(positive_label), "negative_label": str(negative_label), **extra}
    text = json.dumps(info, indent=2, sort_keys=False) + "\n"
    if p.exists():
        old = read_dataset_info(manifest)
        if {k: old.get(k) for k in ("positive_label", "negative_label")} != \
                {k: info[k] for k in ("positive_label", "negative_label")}:
            raise FileExistsError(f"{p} already names positive_label={old.get('positive_label')!r}, "
                                  f"negative_label={old.get('negative_label')!r}; refusing to overwrite it with "
                                  f"{positive_label!r}/{negative_label!r}. Edit or remove it yourself.")
        if p.read_text() == text:
            return p
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(p, text)


def _labels_text(manifest: Path) -> str:
    try:
        labels = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["label"])["label"].str.strip()
    except (ValueError, KeyError, OSError):
        return "(no label column)"
    counts = labels[labels != ""].value_counts()
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "(none)"


def no_positive_label_message(manifest: str | os.PathLike, name_manifest: bool = True) -> str:
    mpath = Path(manifest).expanduser().resolve()
    side = dataset_info_path(mpath)
    which = f"which label of {mpath} is positive?" if name_manifest else "which label is positive?"
    return (f"{which} No positive_label was given and {side} "
            f"{'names none' if side.exists() else 'does not exist'}; labels found: {_labels_text(mpath)}. "
            f"Pass positive_label=<label> (--positive-label <label>), or write {side} with "
            '{"positive_label": "<label>"} (glomlib data fetch writes it for public datasets).')


def resolve_positive_label(manifest: str | os.PathLike, positive_label: str = "") -> str:
    """``positive_label`` when given; else the one the manifest's ``dataset.json`` names; else a
    :class:`ManifestError` listing the labels found and saying how to name the positive one."""
    if positive_label:
        return str(positive_label)
    named = str(read_dataset_info(manifest).get("positive_label") or "")
    if named:
        return named
    raise ManifestError(no_positive_label_message(manifest))


# ----------------------------------------------------------------------------------------------- hashing
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes (memoised per process by path, size and mtime)."""
    p = os.fspath(path)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    h = _HASH_MEMO.get(key)
    if h is None:
        d = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                d.update(chunk)
        h = d.hexdigest()
        _HASH_MEMO[key] = h
    return h


def hash_files(paths: Iterable[str], workers: int | None = None) -> list[str]:
    """sha256 of many files (threaded; hashlib releases the GIL)."""
    paths = list(paths)
    workers = workers or min(4, os.cpu_count() or 1)
    if len(paths) < 16 or workers <= 1:
        return [file_sha256(p) for p in paths]
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(file_sha256, paths))


def data_fingerprint(df: pd.DataFrame) -> str:
    """A stable 16-hex-digit fingerprint of the data: file contents + label, slide, patient and split of
    every row (independent of row order and of where the files live). Uses ``df["sha256"]`` when present."""
    if "sha256" in df.columns:
        hashes = list(df["sha256"])
    else:
        hashes = hash_files(df["path"])
    cols = [c for c in ("label", "slide", "patient", "split") if c in df.columns]
    parts = sorted(
        "\t".join([h] + [str(df[c].iloc[i]) for c in cols]) for i, h in enumerate(hashes)
    )
    d = hashlib.sha256("\t".join(cols).encode())
    for p in parts:
        d.update(p.encode())
        d.update(b"\n")
    return d.hexdigest()[:16]


# --------------------------------------------------------------------------------------- image checks
def _png_info(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit_depth, color_type) from the first 33 bytes of a PNG, or None."""
    if len(head) < 33 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, ctype


def check_image(path: str, full: bool = True) -> list[tuple[str, str, str]]:
    """Check one image file. Returns a list of (severity, kind, message); empty = fine.

    Quick mode (``full=False``) reads the PNG header and trailer only (catches missing, empty, truncated,
    non-image files and unusual modes); full mode also decodes the pixels with OpenCV.
    """
    out: list[tuple[str, str, str]] = []
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return [("error", "missing-file", "file does not exist")]
    except OSError as e:
        return [("error", "unreadable", f"cannot access file: {e}")]
    if os.path.isdir(path):
        return [("error", "unreadable", "is a folder, not an image file")]
    if size == 0:
        return [("error", "empty-file", "file is empty (0 bytes)")]
    too_large = over_budget(path)  # from the header, before anything is decoded
    if too_large:
        return [("error", "too-large", too_large)]
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(max(0, size - 12))
            tail = f.read(12)
    except OSError as e:
        return [("error", "unreadable", f"cannot read file: {e}")]
    is_png = head[:8] == _PNG_SIG
    if is_png:
        info = _png_info(head)
        if info is None:
            return [("error", "unreadable", "PNG header is damaged")]
        if tail != _PNG_IEND:
            return [("error", "truncated", f"PNG is truncated (no end marker; {size} bytes); re-export or re-download it")]
        w, h, depth, ctype = info
        mode = _PNG_COLOR.get(ctype, f"color type {ctype}")
        notes = []
        if ctype in (0, 4):
            notes.append(f"{mode} image, converted to RGB by repeating the grey channel")
        if ctype in (4, 6):
            notes.append("alpha channel dropped")
        if ctype == 3:
            notes.append("palette image, converted to RGB")
        if depth == 16:
            notes.append("16-bit image, scaled to 8-bit")
        if notes:
            out.append(("warning", "mode", "; ".join(notes)))
        if not full:
            return out
    elif head[:2] == b"\xff\xd8" and not full:
        if tail[-2:] != b"\xff\xd9":
            return [("error", "truncated", "JPEG is truncated (no end marker)")]
        return out
    # full decode (always for formats other than PNG/JPEG)
    import cv2

    try:
        buf = np.fromfile(path, dtype=np.uint8)
        with warnings.catch_warnings():
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except Exception as e:  # noqa: BLE001 - any decoder failure is "unreadable"
        img = None
        err = str(e)
    else:
        err = ""
    if img is None:
        what = "damaged image data" if is_png else "is it a PNG/JPEG/TIFF image?"
        return [("error", "unreadable", "cannot be decoded as an image" + (f": {err}" if err else "")
                 + f"; {what}")]
    if not is_png:
        notes = []
        if img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 2)):
            notes.append("grey image, converted to RGB by repeating the grey channel")
        if img.ndim == 3 and img.shape[2] in (2, 4):
            notes.append("alpha channel dropped")
        if img.dtype == np.uint16:
            notes.append("16-bit image, scaled to 8-bit")
        elif img.dtype != np.uint8:
            return [("error", "mode", f"unsupported pixel type {img.dtype}; convert to 8-bit RGB")]
        if notes:
            out.append(("warning", "mode", "; ".join(notes)))
    if min(img.shape[:2]) < 2:
        return [("error", "unreadable", f"image is degenerate ({img.shape[1]}x{img.shape[0]} pixels)")]
    return out


# ------------------------------------------------------------------------------------------ reading
def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist. Create one (see data/README.md) or run "
                            f"'glomlib data fetch glomeruli-pas' / 'glomlib data from-folder ROOT --out {path}'.")
    if path.stat().st_size == 0:
        raise ManifestError(f"Manifest {path} is empty (0 bytes): it needs a header line "
                            f"'path,label,slide' and one row per image.",
                            [Problem(0, str(path), "empty-manifest", "file is empty", skippable=False)])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"Manifest {path} is empty: it needs a header line 'path,label,slide' and "
                            f"one row per image.",
                            [Problem(0, str(path), "empty-manifest", "no header", skippable=False)]) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"Manifest {path} is not a readable CSV file: {e}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def _resolve(base: Path, p: str) -> str:
    if not p:
        return ""
    q = Path(os.path.expanduser(p))
    if not q.is_absolute():
        q = base / q
    return os.path.normpath(str(q))


def _split_ok(v: str) -> bool:
    return v in SPLIT_WORDS or v.isdigit()


def validate_manifest(
    path: str | os.PathLike,
    *,
    positive_label: str = DEFAULT_POSITIVE,
    negative_label: str | None = None,
    require_labels: bool = True,
    full: bool = False,
    workers: int | None = None,
    label_source: str = "",
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read a manifest and check everything; never raises for data problems.

    Returns ``(df, problems)``: df has the normalised columns (see :func:`read_manifest`) plus ``sha256``
    for every readable file, and ``problems`` lists every :class:`Problem` (errors and warnings).
    ``full=True`` decodes every image (``glomlib data check`` does); otherwise headers/trailers only.
    ``label_source``: see :func:`read_manifest`.
    """
    mpath = Path(path).expanduser().resolve()
    raw = _read_csv(mpath)
    base = mpath.parent
    problems: list[Problem] = []

    required = ["path", "slide"] + (["label"] if require_labels and not label_source else [])
    missing = [c for c in required if c not in raw.columns]
    if missing:
        problems.append(Problem(0, str(mpath), "missing-column",
                                f"missing required column(s) {missing}; the header has {list(raw.columns)}. "
                                f"Required: path,label,slide; optional: {','.join(OPTIONAL_COLUMNS)}.",
                                skippable=False))
    if len(raw) == 0:
        problems.append(Problem(0, str(mpath), "empty-manifest",
                                "the manifest has a header but no rows; add one row per image.", skippable=False))
    if missing or len(raw) == 0:
        return raw, problems

    n = len(raw)
    df = pd.DataFrame({"row": np.arange(1, n + 1)})
    df["path"] = [_resolve(base, p.strip()) for p in raw["path"]]
    df["label"] = [s.strip() for s in raw["label"]] if "label" in raw.columns else ""
    df["slide"] = [s.strip() for s in raw["slide"]]
    df["patient"] = [s.strip() for s in raw["patient"]] if "patient" in raw.columns else ""
    df["patient"] = np.where(df["patient"] == "", df["slide"], df["patient"])
    df["center"] = [s.strip() for s in raw["center"]] if "center" in raw.columns else ""
    df["split"] = [s.strip().lower() for s in raw["split"]] if "split" in raw.columns else ""
    df["mask"] = [_resolve(base, p.strip()) for p in raw["mask"]] if "mask" in raw.columns else ""
    extra = [c for c in raw.columns if c not in df.columns]
    for c in extra:
        df[c] = raw[c].values
    shown = [p if p else "" for p in raw["path"]]
    tie_rows: list[int] = []
    if label_source:  # train/evaluate on one rater's labels or the raters' majority (glomlib.data.raters)
        from glomlib.data.raters import consensus, rater_column, rater_columns

        df["manifest_label"] = df["label"]
        if label_source == "consensus":
            cons = consensus(df, rater_columns(df))
            df["label"] = cons["consensus"].to_numpy()
            tie_rows = [int(i) for i in np.flatnonzero(cons["tie"].to_numpy())]
        else:
            try:
                df["label"] = [str(v).strip() for v in df[rater_column(df, label_source)]]
            except ValueError as e:
                problems.append(Problem(0, str(mpath), "missing-column", f"label_source={label_source!r}: {e}",
                                        skippable=False))
                return raw, problems
    df.attrs["label_source"] = label_source or "label"
    df.attrs["label_ties"] = [i + 1 for i in tie_rows]

    def add(i: int, kind: str, msg: str, severity: str = "error", skippable: bool = True, file: str | None = None):
        problems.append(Problem(int(i) + 1, shown[i] if file is None else file, kind, msg, severity, skippable))

    # --- per-row fields
    for i in range(n):
        if not df.at[i, "path"]:
            add(i, "missing-value", "empty 'path'")
        if not df.at[i, "slide"]:
            add(i, "missing-value", "empty 'slide'; every image needs the slide it was cut from")
        if not _split_ok(df.at[i, "split"]):
            add(i, "split", f"split {df.at[i, 'split']!r} is not one of train/val/test/<fold number>/empty",
                skippable=False)

    # --- labels
    for i in tie_rows:
        votes = ", ".join(f"{c}={df.at[i, c]}" for c in df.columns if str(c).startswith("label_") and df.at[i, c])
        add(i, "label-tie", f"the raters' majority is a tie ({votes}); no consensus label. Decide it (e.g. a "
                            f"further rater), or skip such rows with on_error='skip' (they are recorded)")
    labels = df["label"]
    labelled = labels[labels != ""]
    counts = labelled.value_counts()
    neg = negative_label
    if not positive_label:  # "" = the dataset's own word (dataset.json beside the manifest)
        info = read_dataset_info(mpath)
        positive_label = str(info.get("positive_label") or "")
        if neg is None and positive_label and info.get("negative_label"):
            neg = str(info["negative_label"])
    if not positive_label and len(counts):
        problems.append(Problem(0, str(mpath), "label", no_positive_label_message(mpath, False), skippable=False))
    if require_labels:
        for i in np.flatnonzero((labels == "").to_numpy()):
            add(i, "label", "empty label (labels are required here; use require_labels=False / --unlabeled "
                            "for an unlabeled manifest)")
    if not positive_label:
        pass  # no labels at all, or reported above
    elif len(counts) and positive_label not in counts.index:
        found = ", ".join(f"{k} ({v})" for k, v in counts.items())
        problems.append(Problem(0, str(mpath), "label",
                                f"the positive label {positive_label!r} occurs in no row; labels found: {found}. "
                                f"Pass positive_label=... (--positive-label) naming the positive class.",
                                skippable=False))
    else:
        if neg is None:
            others = [k for k in counts.index if k != positive_label]
            if positive_label in DEFAULT_NEGATIVE and DEFAULT_NEGATIVE[positive_label] in counts.index:
                neg = DEFAULT_NEGATIVE[positive_label]
            elif others:
                neg = others[0]  # most frequent other label
            else:
                neg = DEFAULT_NEGATIVE.get(positive_label, "")
        allowed = {positive_label, neg, ""}
        for i in np.flatnonzero(~labels.isin(allowed).to_numpy()):
            add(i, "label", f"label {labels.iat[i]!r} is not in the label set "
                            f"{{{positive_label!r} (positive), {neg!r} (negative)}}; fix the row or set "
                            f"negative_label / --negative-label")
    df["y"] = np.where((labels == positive_label) & (labels != ""), 1,
                       np.where((labels == neg) & (labels != ""), 0, -1))
    df.attrs["positive_label"] = positive_label
    df.attrs["negative_label"] = neg

    # --- duplicate paths
    first_row: dict[str, int] = {}
    for i, p in enumerate(df["path"]):
        if not p:
            continue
        if p in first_row:
            add(i, "duplicate-path", f"same file as row {first_row[p] + 1}; each image must appear once")
        else:
            first_row[p] = i

    # --- files: existence, size, integrity, mode (threaded)
    todo = [i for i in range(n) if df.at[i, "path"] and df.at[i, "path"] in first_row
            and first_row[df.at[i, "path"]] == i]
    mask_todo = [i for i in range(n) if df.at[i, "mask"]]

    def work(i: int, col: str):
        p = df.at[i, col]
        res = check_image(p, full=full)
        sha = ""
        if not any(s == "error" for s, _, _ in res):
            try:
                sha = file_sha256(p)
            except OSError as e:
                res.append(("error", "unreadable", f"cannot read file: {e}"))
        return i, col, res, sha

    jobs = [(i, "path") for i in todo] + [(i, "mask") for i in mask_todo]
    workers = workers or min(4, os.cpu_count() or 1)
    if len(jobs) > 16 and workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(lambda a: work(*a), jobs))
    else:
        results = [work(*a) for a in jobs]
    sha = [""] * n
    for i, col, res, h in results:
        for sev, kind, msg in res:
            if col == "mask":
                if kind == "mode":
                    continue  # masks are thresholded; any mode is fine
                add(i, "mask-" + kind, f"mask {df.at[i, 'mask']}: {msg}", severity=sev)
            else:
                add(i, kind, msg, severity=sev)
        if col == "path":
            sha[i] = h
    df["sha256"] = sha
    for i in range(n):  # duplicated rows share the file's hash
        p = df.at[i, "path"]
        if p and not sha[i] and p in first_row:
            df.at[i, "sha256"] = sha[first_row[p]]

    # --- duplicate content (same bytes under two names)
    first_hash: dict[str, int] = {}
    for i in todo:
        h = sha[i]
        if not h:
            continue
        if h in first_hash:
            j = first_hash[h]
            add(i, "duplicate-content", f"same image bytes as row {j + 1} ({shown[j]}); "
                                        f"remove one copy so it cannot land in both training and test data")
        else:
            first_hash[h] = i

    # --- grouping consistency: a slide in one patient; a slide/patient in one split
    if "patient" in raw.columns:
        pats = df.groupby("slide")["patient"].nunique()
        for slide in pats[pats > 1].index:
            rows = df.index[df["slide"] == slide]
            problems.append(Problem(int(rows[0]) + 1, shown[rows[0]], "slide-patient",
                                    f"slide {slide!r} is assigned to several patients "
                                    f"{sorted(df.loc[rows, 'patient'].unique())} (rows {_rows(rows)})",
                                    skippable=False))
    if "split" in raw.columns:
        for key in ("slide", "patient"):
            if key == "patient" and "patient" not in raw.columns:
                continue
            sp = df[df[key] != ""].groupby(key)["split"].nunique()
            for g in sp[sp > 1].index:
                rows = df.index[df[key] == g]
                by = ", ".join(f"{s or '(empty)'}: rows {_rows(df.index[(df[key] == g) & (df['split'] == s)])}"
                               for s in sorted(df.loc[rows, "split"].unique()))
                problems.append(Problem(int(rows[0]) + 1, shown[rows[0]], "split-leak",
                                        f"{key} {g!r} is in more than one split ({by}); all images of one "
                                        f"{key} must be in the same split, or its images leak into the test set",
                                        skippable=False))
    problems.sort(key=lambda p: (p.row, p.severity != "error"))
    return df, problems


def _rows(idx: Iterable[int], limit: int = 30) -> str:
    r = [int(i) + 1 for i in idx]
    s = ",".join(map(str, r[:limit]))
    return s + (f",... ({len(r)} rows)" if len(r) > limit else "")


def format_problems(problems: Sequence[Problem], path: str | os.PathLike = "", warn_limit: int = 20) -> str:
    """Human-readable report: every error on its own line; warnings grouped (first ``warn_limit`` each)."""
    errors = [p for p in problems if p.severity == "error"]
    warns = [p for p in problems if p.severity != "error"]
    lines = []
    if errors:
        lines.append(f"{len(errors)} error(s) in manifest {path}:")
        lines += ["  " + p.format() for p in errors]
    if warns:
        lines.append(f"{len(warns)} warning(s) in manifest {path}:")
        by_msg: dict[str, list[Problem]] = {}
        for p in warns:
            by_msg.setdefault(p.message, []).append(p)
        for msg, ps in by_msg.items():
            for p in ps[:warn_limit]:
                lines.append("  " + p.format())
            if len(ps) > warn_limit:
                lines.append(f"  ... and {len(ps) - warn_limit} more rows with: {msg}")
    return "\n".join(lines)


def write_skipped(problems: Sequence[Problem], df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write skipped rows (row, path, label, slide, reasons) to a CSV file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reasons: dict[int, list[str]] = {}
    for p in problems:
        if p.severity == "error" and p.row:
            reasons.setdefault(p.row, []).append(f"{p.kind}: {p.message}")
    rows = []
    for r, rs in sorted(reasons.items()):
        rec = df.iloc[r - 1]
        rows.append({"row": r, "path": rec.get("path", ""), "label": rec.get("label", ""),
                     "slide": rec.get("slide", ""), "reason": " | ".join(rs)})
    return write_csv_atomic(pd.DataFrame(rows, columns=["row", "path", "label", "slide", "reason"]), out)


def read_manifest(
    path: str | os.PathLike,
    *,
    positive_label: str = DEFAULT_POSITIVE,
    require_labels: bool = True,
    on_error: str = "raise",
    skipped_out: str | os.PathLike | None = None,
    negative_label: str | None = None,
    full: bool = False,
    label_source: str = "",
) -> pd.DataFrame:
    """Read and validate a manifest; return one row per image.

    Columns: ``path`` (absolute), ``label`` ("" = unlabeled), ``y`` (1 positive, 0 negative, -1 unlabeled),
    ``slide``, ``patient`` (= slide when absent), ``center`` (""), ``split`` (""), ``mask`` (absolute or ""),
    ``row`` (1-based data row number), ``sha256`` (file content hash), plus any extra columns of the CSV.
    ``df.attrs``: ``manifest`` (absolute path), ``positive_label``, ``negative_label``, ``warnings``
    (list of str), ``skipped`` (number of rows skipped).

    ``on_error="raise"``: any error raises :class:`ManifestError` listing every problem with its row and file.
    ``on_error="skip"``: rows with row-level errors (missing/empty/truncated/unreadable file, bad label,
    duplicate path or content) are dropped and written with their reasons to ``skipped_out`` (required);
    whole-manifest problems (missing column, empty manifest, slide in several splits...) still raise.
    ``positive_label=""`` (default): the label named by the manifest's ``dataset.json``; an error listing the
    labels found when there is none (a manifest without labels needs none).
    ``negative_label``: the ``dataset.json``'s, else ``M0`` when the positive label is ``M1``, else the
    manifest's other label.
    ``full=True`` decodes every image (slower; ``glomlib data check`` does this).
    ``label_source``: ``""`` = the ``label`` column; ``"consensus"`` = the majority of the ``label_<rater>``
    columns (ties are errors of kind ``label-tie``: raised, or skipped and recorded with ``on_error="skip"``);
    a rater name (``rater1`` or ``label_rater1``) = that rater's column. The manifest's own ``label`` is kept
    as ``manifest_label``; ``df.attrs["label_source"]`` and ``df.attrs["label_ties"]`` (1-based rows) record it.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if on_error == "skip" and skipped_out is None:
        raise ValueError("on_error='skip' needs skipped_out=<csv path> so that skipped rows and their reasons "
                         "are recorded (nothing is dropped silently).")
    mpath = Path(path).expanduser().resolve()
    df, problems = validate_manifest(mpath, positive_label=positive_label, negative_label=negative_label,
                                     require_labels=require_labels, full=full, label_source=label_source)
    neg = df.attrs.get("negative_label")
    positive_label = df.attrs.get("positive_label", positive_label)  # resolved from dataset.json when ""
    errors = [p for p in problems if p.severity == "error"]
    fatal = [p for p in errors if not p.skippable or not p.row]
    if errors and (on_error == "raise" or fatal):
        what = "" if on_error == "raise" else " (these cannot be skipped)"
        raise ManifestError(format_problems(errors if on_error == "raise" else fatal, mpath) + what
                            + "\nFix the rows above, or pass on_error='skip' (glomlib data check --skip-bad) to "
                              "drop bad rows and record them.", problems)
    warns = [p for p in problems if p.severity != "error"]
    skipped = 0
    if errors:  # skip mode, all skippable
        bad = sorted({p.row for p in errors})
        write_skipped(errors, df, skipped_out)
        df = df[~df["row"].isin(bad)].reset_index(drop=True)
        skipped = len(bad)
        warnings.warn(f"{skipped} bad row(s) of {mpath} skipped; rows and reasons written to {skipped_out}",
                      ManifestWarning, stacklevel=2)
        if len(df) == 0:
            raise ManifestError(f"every row of {mpath} was bad; nothing left to use (see {skipped_out})", problems)
    elif on_error == "skip" and skipped_out is not None:
        write_skipped([], df, skipped_out)  # an empty record says "nothing skipped"
    if warns:
        warnings.warn(format_problems(warns, mpath), ManifestWarning, stacklevel=2)
    df.attrs["manifest"] = str(mpath)
    df.attrs["warnings"] = [p.format() for p in warns]
    df.attrs["skipped"] = skipped
    base_cols = ["path", "label", "y", "slide", "patient", "center", "split", "mask", "row", "sha256"]
    df = df[base_cols + [c for c in df.columns if c not in base_cols]]
    df.attrs.update({"manifest": str(mpath), "warnings": [p.format() for p in warns], "skipped": skipped,
                     "positive_label": positive_label, "negative_label": neg})
    return df


def write_manifest(df: pd.DataFrame, out: str | os.PathLike, *, relative: bool = True) -> Path:
    """Write a manifest CSV (paths relative to its folder when ``relative``), atomically.

    Refuses to overwrite an existing manifest with different content; identical content is left as is.
    """
    out = Path(out).expanduser().resolve()
    cols = [c for c in ("path", "label", "slide", "patient", "center", "split", "mask") if c in df.columns]
    w = df[cols].copy()
    if relative:
        for c in ("path", "mask"):
            if c in w.columns:
                w[c] = [os.path.relpath(p, out.parent) if p else "" for p in w[c]]
    text = w.to_csv(index=False, lineterminator="\n")
    if out.exists():
        if out.read_text() == text:
            return out
        raise FileExistsError(f"{out} already exists with different content; refusing to overwrite it. "
                              f"Remove it or choose another output path.")
    write_text_atomic(out, text)  # unique temp file beside it, renamed into place
    return out
