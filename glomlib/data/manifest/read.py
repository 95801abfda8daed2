"""Read a manifest: the CSV, its normalised columns, every check of :mod:`.checks`, then raise or skip."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.core.io import write_text_atomic
from glomlib.data.manifest.checks import CHECKS, Rows
from glomlib.data.manifest.problems import (
    ManifestError,
    ManifestWarning,
    Problem,
    errors_of,
    format_problems,
    write_skipped,
)

REQUIRED_COLUMNS = ("path", "label", "slide")
OPTIONAL_COLUMNS = ("patient", "center", "split", "mask")
DEFAULT_POSITIVE = ""  # "": the positive label named by the manifest's dataset.json (see resolve_positive_label)
BASE_COLUMNS = ["path", "label", "y", "slide", "patient", "center", "split", "mask", "row", "sha256"]


def _empty(path: Path, what: str, kind: str) -> ManifestError:
    return ManifestError(
        f"Manifest {path} is empty{what}: it needs a header line 'path,label,slide' and one row per image.",
        [Problem(0, str(path), "empty-manifest", kind, skippable=False)],
    )


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ManifestError(
            f"Manifest {path} does not exist. Create one (see data/README.md) or run 'glomlib data fetch glomeruli-pas' / 'glomlib data from-folder ROOT --out {path}'."
        )
    if path.stat().st_size == 0:
        raise _empty(path, " (0 bytes)", "file is empty")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise _empty(path, "", "no header") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"Manifest {path} is not a readable CSV file: {e}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def _resolve(base: Path, p: str) -> str:
    return os.path.normpath(str(base / os.path.expanduser(p))) if p else ""


def _normalise(raw: pd.DataFrame, base: Path) -> pd.DataFrame:
    """The documented columns (stripped; paths absolute; patient = slide when empty), then the CSV's others."""

    def col(name: str, fn=str.strip):
        return [fn(s.strip()) for s in raw[name]] if name in raw.columns else ""

    df = pd.DataFrame({"row": np.arange(1, len(raw) + 1)})
    df["path"] = col("path", lambda p: _resolve(base, p))
    df["label"], df["slide"], df["patient"], df["center"] = col("label"), col("slide"), col("patient"), col("center")
    df["patient"] = np.where(df["patient"] == "", df["slide"], df["patient"])
    df["split"] = col("split", str.lower)
    df["mask"] = col("mask", lambda p: _resolve(base, p))
    for c in raw.columns:
        if c not in df.columns:
            df[c] = raw[c].values
    return df


def _label_source(df: pd.DataFrame, label_source: str) -> list[int]:
    """Replace ``label`` by one rater's column or the raters' majority; return the rows (0-based) of tied votes."""
    from glomlib.data.raters import consensus, rater_column, rater_columns

    df["manifest_label"] = df["label"]
    if label_source == "consensus":
        cons = consensus(df, rater_columns(df))
        df["label"] = cons["consensus"].to_numpy()
        return [int(i) for i in np.flatnonzero(cons["tie"].to_numpy())]
    df["label"] = [str(v).strip() for v in df[rater_column(df, label_source)]]
    return []


def _frame_problems(mpath: Path, raw: pd.DataFrame, require_labels: bool, label_source: str) -> list[Problem]:
    missing = [
        c
        for c in ("path", "slide") + (("label",) if require_labels and not label_source else ())
        if c not in raw.columns
    ]
    out = []
    if missing:
        msg = f"missing required column(s) {missing}; the header has {list(raw.columns)}. Required: path,label,slide; optional: {','.join(OPTIONAL_COLUMNS)}."
        out.append(Problem(0, str(mpath), "missing-column", msg, skippable=False))
    if len(raw) == 0:
        msg = "the manifest has a header but no rows; add one row per image."
        out.append(Problem(0, str(mpath), "empty-manifest", msg, skippable=False))
    return out


def validate_manifest(
    path: str | os.PathLike,
    *,
    positive_label: str = DEFAULT_POSITIVE,
    negative_label: str | None = None,
    require_labels: bool = True,
    full: bool = False,
    workers: int | None = None,
    label_source: str = "",
    label_map: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read a manifest and run every check of :data:`~glomlib.data.manifest.checks.CHECKS`; never raises for
    data problems. Returns ``(df, problems)``: df has the normalised columns (see :func:`read_manifest`) plus
    ``sha256`` of every readable file; ``full=True`` decodes every image (``glomlib data check`` does).
    ``label_map`` renames label values (``{"1": "GS"}``, ``glomlib data check --label-map``), recorded in attrs."""
    mpath = Path(path).expanduser().resolve()
    raw = _read_csv(mpath)
    problems = _frame_problems(mpath, raw, require_labels, label_source)
    if problems:
        return raw, problems
    df = _normalise(raw, mpath.parent)
    ties: list[int] = []
    if label_source:  # train/evaluate on one rater's labels or the raters' majority (glomlib.data.raters)
        try:
            ties = _label_source(df, label_source)
        except ValueError as e:
            return raw, [
                Problem(0, str(mpath), "missing-column", f"label_source={label_source!r}: {e}", skippable=False)
            ]
    label_map = dict(label_map or {})
    if label_map:
        df["label"] = [label_map.get(v, v) for v in df["label"]]
    df.attrs.update(label_source=label_source or "label", label_ties=[i + 1 for i in ties], label_map=label_map)
    rows = Rows(mpath, raw, df, list(raw["path"]), positive_label, negative_label, require_labels, full, workers, ties)
    rows.label_map = label_map
    for check in CHECKS:
        problems += check.run(rows)
    problems.sort(key=lambda p: (p.row, p.severity != "error"))
    return df, problems


def _skip(df: pd.DataFrame, errors: list[Problem], problems: list[Problem], mpath: Path, skipped_out) -> pd.DataFrame:
    bad = sorted({p.row for p in errors})
    write_skipped(errors, df, skipped_out)
    df = df[~df["row"].isin(bad)].reset_index(drop=True)
    warnings.warn(
        f"{len(bad)} bad row(s) of {mpath} skipped; rows and reasons written to {skipped_out}",
        ManifestWarning,
        stacklevel=3,
    )
    if len(df) == 0:
        raise ManifestError(f"every row of {mpath} was bad; nothing left to use (see {skipped_out})", problems)
    return df


def _raise_errors(errors: list[Problem], problems: list[Problem], on_error: str, mpath: Path) -> None:
    """Any error with ``on_error="raise"``, else the ones that cannot be skipped: a :class:`ManifestError`."""
    fatal = [p for p in errors if not p.skippable or not p.row]
    if errors and (on_error == "raise" or fatal):
        what = "" if on_error == "raise" else " (these cannot be skipped)"
        msg = format_problems(errors if on_error == "raise" else fatal, mpath) + what
        raise ManifestError(
            msg
            + "\nFix the rows above, or pass on_error='skip' (glomlib data check --skip-bad) to drop bad rows and record them.",
            problems,
        )


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
    """Read and validate a manifest; return one row per image (see ``data/README.md``).

    Columns: ``path`` (absolute), ``label`` ("" = unlabeled), ``y`` (1 positive, 0 negative, -1 unlabeled),
    ``slide``, ``patient`` (= slide when absent), ``center``, ``split``, ``mask`` (absolute or ""), ``row``
    (1-based), ``sha256``, then the CSV's other columns. ``df.attrs``: ``manifest``, ``positive_label``,
    ``negative_label``, ``warnings``, ``skipped``, ``label_source``, ``label_ties``.

    ``on_error="raise"``: any error raises :class:`ManifestError` listing every problem with its row and file;
    ``"skip"``: rows with row-level errors are dropped and written with their reasons to ``skipped_out``
    (required); whole-manifest problems still raise. ``positive_label=""``: the one ``dataset.json`` names.
    ``negative_label``: the ``dataset.json``'s, else ``M0`` for ``M1``, else the manifest's other label.
    ``full=True`` decodes every image. ``label_source``: ``""`` = the ``label`` column, ``"consensus"`` = the
    majority of the ``label_<rater>`` columns (ties are ``label-tie`` errors), or a rater's name; the manifest's
    own label is kept as ``manifest_label``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if on_error == "skip" and skipped_out is None:
        raise ValueError(
            "on_error='skip' needs skipped_out=<csv path> so that skipped rows and their reasons are recorded (nothing is dropped silently)."
        )
    mpath = Path(path).expanduser().resolve()
    df, problems = validate_manifest(
        mpath,
        positive_label=positive_label,
        negative_label=negative_label,
        require_labels=require_labels,
        full=full,
        label_source=label_source,
    )
    attrs = {k: df.attrs.get(k) for k in ("positive_label", "negative_label", "label_source", "label_ties")}
    errors = errors_of(problems)
    _raise_errors(errors, problems, on_error, mpath)
    if errors:  # skip mode, all skippable
        df = _skip(df, errors, problems, mpath, skipped_out)
    elif on_error == "skip":
        write_skipped([], df, skipped_out)  # an empty record says "nothing skipped"
    warns = [p for p in problems if p.severity != "error"]
    if warns:
        warnings.warn(format_problems(warns, mpath), ManifestWarning, stacklevel=2)
    df = df[BASE_COLUMNS + [c for c in df.columns if c not in BASE_COLUMNS]]
    df.attrs.update(
        attrs, manifest=str(mpath), warnings=[p.format() for p in warns], skipped=len({p.row for p in errors})
    )
    return df


def write_manifest(df: pd.DataFrame, out: str | os.PathLike, *, relative: bool = True) -> Path:
    """Write a manifest CSV (paths relative to its folder when ``relative``), atomically. Refuses to overwrite
    an existing manifest with different content; identical content is left as is."""
    out = Path(out).expanduser().resolve()
    w = df[[c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in df.columns]].copy()
    for c in ("path", "mask") if relative else ():
        if c in w.columns:
            w[c] = [os.path.relpath(p, out.parent) if p else "" for p in w[c]]
    text = w.to_csv(index=False, lineterminator="\n")
    if out.exists():
        if out.read_text() == text:
            return out
        raise FileExistsError(
            f"{out} already exists with different content; refusing to overwrite it. Remove it or choose another output path."
        )
    return write_text_atomic(out, text)
