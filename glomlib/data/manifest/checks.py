"""The manifest checks, run in order by :func:`glomlib.data.manifest.read.validate_manifest`.

Each check is a small named function that returns its problems, each with its row number and file. A check may
also record what later checks and the caller need on the :class:`Rows` it is given (the ``y`` column, file
hashes, the first row of each path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from glomlib.data.manifest.dataset import no_positive_label_message, read_dataset_info
from glomlib.data.manifest.hashing import file_sha256, threaded
from glomlib.data.manifest.image_check import check_image
from glomlib.data.manifest.labels import map_hint, not_a_class_name
from glomlib.data.manifest.problems import Problem, rows_text

DEFAULT_NEGATIVE = {"M1": "M0"}  # documented default label pair; other positives infer the negative
SPLIT_WORDS = ("", "train", "val", "test")


@dataclass
class Rows:
    """The normalised manifest and what the checks learn about it."""

    mpath: Path
    raw: pd.DataFrame
    df: pd.DataFrame
    shown: list[str]  # each row's path as written in the manifest
    positive_label: str = ""
    negative_label: str | None = None
    require_labels: bool = True
    full: bool = False
    workers: int | None = None
    tie_rows: list[int] = field(default_factory=list)
    label_map: dict[str, str] = field(default_factory=dict)  # explicit renaming of label values (--label-map)
    first_row: dict[str, int] = field(default_factory=dict)  # path -> first row index naming it

    def problem(self, i: int, kind: str, msg: str, severity: str = "error", skippable: bool = True) -> Problem:
        return Problem(int(i) + 1, self.shown[i], kind, msg, severity, skippable)

    def whole(self, kind: str, msg: str, severity: str = "error") -> Problem:
        return Problem(0, str(self.mpath), kind, msg, severity, skippable=False)


class Check(NamedTuple):
    name: str
    description: str
    run: Callable[[Rows], list[Problem]]


def fields(r: Rows) -> list[Problem]:
    df, out = r.df, []
    out += [r.problem(i, "missing-value", "empty 'path'") for i in np.flatnonzero(df["path"] == "")]
    out += [
        r.problem(i, "missing-value", "empty 'slide'; every image needs the slide it was cut from")
        for i in np.flatnonzero(df["slide"] == "")
    ]
    for i, s in enumerate(df["split"]):
        if not (s in SPLIT_WORDS or s.isdigit()):
            out.append(
                r.problem(i, "split", f"split {s!r} is not one of train/val/test/<fold number>/empty", skippable=False)
            )
    return out


def label_ties(r: Rows) -> list[Problem]:
    df, out = r.df, []
    for i in r.tie_rows:
        votes = ", ".join(f"{c}={df.at[i, c]}" for c in df.columns if str(c).startswith("label_") and df.at[i, c])
        msg = f"the raters' majority is a tie ({votes}); no consensus label. Decide it (e.g. a further rater), or skip such rows with on_error='skip' (they are recorded)"
        out.append(r.problem(i, "label-tie", msg))
    return out


def _negative(counts: pd.Series, positive: str) -> str:
    """M0 for M1 (when present), else the most frequent other label."""
    others = [k for k in counts.index if k != positive]
    if positive in DEFAULT_NEGATIVE and DEFAULT_NEGATIVE[positive] in counts.index:
        return DEFAULT_NEGATIVE[positive]
    return others[0] if others else DEFAULT_NEGATIVE.get(positive, "")


def _positive(r: Rows) -> tuple[str, str | None]:
    """The positive and negative label asked for, else the ones the dataset.json names (mapped by --label-map)."""
    pos, neg = r.positive_label, r.negative_label
    if not pos:
        info = read_dataset_info(r.mpath)
        pos = str(info.get("positive_label") or "")
        if neg is None and pos and info.get("negative_label"):
            neg = str(info["negative_label"])
    return r.label_map.get(pos, pos), None if neg is None else r.label_map.get(neg, neg)


def _label_values(r: Rows, counts: pd.Series) -> list[Problem]:
    """Label values that are not class names (0/1, true/false: refused) or hold surrounding spaces (warned)."""
    out = []
    bad = [v for v in counts.index if not_a_class_name(v)]
    if bad:
        found = ", ".join(f"{v!r} ({counts[v]} rows, {not_a_class_name(v)})" for v in bad)
        msg = (
            f"label values {found} are not class names: notebooks, profiles and model files read them back as "
            "numbers or booleans, so a run would train and then fail. This manifest cannot be used as is, with or "
            f"without --positive-label. Name the classes: 'glomlib data check {r.mpath} --label-map "
            f"{map_hint(list(counts.index))} --positive-label <positive> --out NEW.csv' writes a new manifest with "
            "the names and records the mapping in its dataset.json (or rename the labels in the CSV)."
        )
        out.append(r.whole("label-value", msg, "error" if r.require_labels else "warning"))
    if "label" in r.raw.columns and r.df.attrs.get("label_source") == "label":
        raw = pd.Series([str(v) for v in r.raw["label"]])
        for v in sorted(set(raw[raw != raw.str.strip()])):
            rows = np.flatnonzero(raw == v)
            msg = f"label {v!r} has surrounding spaces (rows {rows_text(rows)}); it is read as {v.strip()!r}"
            out.append(r.problem(rows[0], "label-spaces", msg, severity="warning"))
    return out


def labels(r: Rows) -> list[Problem]:
    """Resolves the positive and negative labels (``""`` = the dataset.json's) and sets ``y``."""
    labels = r.df["label"]
    counts = labels[labels != ""].value_counts()
    pos, neg = _positive(r)
    out = _label_values(r, counts)
    if not pos and len(counts) and not any(p.kind == "label-value" for p in out):
        out.append(r.whole("label", no_positive_label_message(r.mpath, False)))
    if r.require_labels:
        msg = "empty label (labels are required here; use require_labels=False / --unlabeled for an unlabeled manifest)"
        out += [r.problem(i, "label", msg) for i in np.flatnonzero(labels == "")]
    if pos and len(counts) and pos not in counts.index:
        found = ", ".join(f"{k} ({v})" for k, v in counts.items())
        msg = f"the positive label {pos!r} occurs in no row; labels found: {found}. Pass positive_label=... (--positive-label) naming the positive class."
        out.append(r.whole("label", msg))
    elif pos:
        neg = _negative(counts, pos) if neg is None else neg
        out += [
            r.problem(
                i,
                "label",
                f"label {labels.iat[i]!r} is not in the label set {{{pos!r} (positive), {neg!r} (negative)}}; fix the row or set negative_label / --negative-label",
            )
            for i in np.flatnonzero(~labels.isin({pos, neg, ""}))
        ]
    r.df["y"] = np.where((labels == pos) & (labels != ""), 1, np.where((labels == neg) & (labels != ""), 0, -1))
    r.df.attrs.update(positive_label=pos, negative_label=neg)
    return out


def duplicate_paths(r: Rows) -> list[Problem]:
    out = []
    for i, p in enumerate(r.df["path"]):
        if p and p in r.first_row:
            out.append(
                r.problem(i, "duplicate-path", f"same file as row {r.first_row[p] + 1}; each image must appear once")
            )
        elif p:
            r.first_row[p] = i
    return out


def _file_job(r: Rows, i: int, col: str):
    p = r.df.at[i, col]
    res = check_image(p, full=r.full)
    sha = ""
    if not any(s == "error" for s, _, _ in res):
        try:
            sha = file_sha256(p)
        except OSError as e:
            res.append(("error", "unreadable", f"cannot read file: {e}"))
    return i, col, res, sha


def files(r: Rows) -> list[Problem]:
    """Every image (once per path) and mask: exists, not empty, within the pixel budget, intact; sets ``sha256``."""
    df, out = r.df, []
    jobs = [(i, "path") for i in r.first_row.values()] + [(i, "mask") for i in np.flatnonzero(df["mask"] != "")]
    sha = [""] * len(df)
    for i, col, res, h in threaded(lambda a: _file_job(r, *a), jobs, r.workers):
        for sev, kind, msg in res:
            if col == "path":
                out.append(r.problem(i, kind, msg, severity=sev))
            elif kind != "mode":  # masks are thresholded; any mode is fine
                out.append(r.problem(i, "mask-" + kind, f"mask {df.at[i, 'mask']}: {msg}", severity=sev))
        if col == "path":
            sha[i] = h
    df["sha256"] = [sha[r.first_row[p]] if p in r.first_row else "" for p in df["path"]]  # duplicates share it
    return out


def duplicate_content(r: Rows) -> list[Problem]:
    first: dict[str, int] = {}
    out = []
    for i in r.first_row.values():
        h = r.df.at[i, "sha256"]
        if h and h in first:
            msg = f"same image bytes as row {first[h] + 1} ({r.shown[first[h]]}); remove one copy so it cannot land in both training and test data"
            out.append(r.problem(i, "duplicate-content", msg))
        elif h:
            first[h] = i
    return out


def _slide_in_several(r: Rows, col: str, what: str, why: str) -> list[Problem]:
    if col not in r.raw.columns:
        return []
    df, out = r.df, []
    n = df.groupby("slide")[col].nunique()
    for slide in n[n > 1].index:
        rows = df.index[df["slide"] == slide]
        msg = f"slide {slide!r} is assigned to several {what} {sorted(df.loc[rows, col].unique())} (rows {rows_text(rows)}){why}"
        out.append(r.problem(rows[0], f"slide-{col}", msg, skippable=False))
    return out


def slide_patient(r: Rows) -> list[Problem]:
    return _slide_in_several(r, "patient", "patients", "")


def slide_center(r: Rows) -> list[Problem]:
    why = "; its images would land on both sides of a leave-one-centre-out split. Give each slide one centre"
    return _slide_in_several(r, "center", "centres", why)


def split_leak(r: Rows) -> list[Problem]:
    if "split" not in r.raw.columns:
        return []
    df, out = r.df, []
    for key in ("slide", "patient") if "patient" in r.raw.columns else ("slide",):
        sp = df[df[key] != ""].groupby(key)["split"].nunique()
        for g in sp[sp > 1].index:
            rows = df.index[df[key] == g]
            by = ", ".join(
                f"{s or '(empty)'}: rows {rows_text(df.index[(df[key] == g) & (df['split'] == s)])}"
                for s in sorted(df.loc[rows, "split"].unique())
            )
            msg = f"{key} {g!r} is in more than one split ({by}); all images of one {key} must be in the same split, or its images leak into the test set"
            out.append(r.problem(rows[0], "split-leak", msg, skippable=False))
    return out


CHECKS = (
    Check("fields", "every row names its file and slide; split is train/val/test/a fold number/empty", fields),
    Check("label-ties", "a consensus label is not a tie of the raters", label_ties),
    Check("labels", "labels are class names; the positive one occurs; each is the positive or the negative", labels),
    Check("duplicate-paths", "each file is named by one row", duplicate_paths),
    Check("files", "every image and mask exists, is not empty, fits the pixel budget and decodes", files),
    Check("duplicate-content", "no two rows hold the same image bytes", duplicate_content),
    Check("slide-patient", "a slide belongs to one patient", slide_patient),
    Check("slide-center", "a slide belongs to one centre", slide_center),
    Check("split-leak", "all rows of a slide (patient) are in the same split", split_leak),
)
