"""``glomlib data ...``: check a manifest, build one from a folder, fetch a public dataset, apply a label review.

    glomlib data check MANIFEST [--positive-label LABEL] [--skip-bad [--skipped-out CSV]] [--out CLEAN.csv]
    glomlib data check MANIFEST --label-map 1=GS,0=nonGS --positive-label GS --out NAMED.csv
    glomlib data from-folder ROOT --out manifest.csv [--positive-label LABEL] [--slide-regex REGEX] ...
    glomlib data fetch glomeruli-pas [--mirror DIR | --no-mirror] [--out DIR]
    glomlib data apply-review REVIEW.csv --manifest M.csv --out M2.csv [--reviewer NAME] [--date YYYY-MM-DD]

Exit status: 0 = fine (warnings allowed), 1 = problems found, 2 = usage error, 3 = the output exists. No torch
import here.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from glomlib.core.config import NonNegativeInt, StepConfig
from glomlib.core.errors import ConfigError
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.data.folder import DEFAULT_SLIDE_REGEX, label_folder_problems, scan_folder
from glomlib.data.manifest import (
    DEFAULT_POSITIVE,
    IMAGE_EXTENSIONS,
    ManifestError,
    data_fingerprint,
    format_problems,
    read_dataset_info,
    validate_manifest,
    write_dataset_info,
    write_manifest,
    write_skipped,
)
from glomlib.data.manifest.labels import parse_label_map
from glomlib.data.manifest.problems import errors_of

EXIT_EXISTS = 3  # the documented "output exists" code (glomlib --help)


def _positional(metavar: str) -> tuple:
    """A positional argument shown as ``metavar`` in the usage line, as documented."""
    return tyro.conf.Positional, tyro.conf.arg(metavar=metavar)


ManifestArg = Annotated[str, *_positional("MANIFEST")]
RootArg = Annotated[str, *_positional("ROOT")]
ReviewArg = Annotated[str, *_positional("REVIEW.csv")]
DatasetArg = Annotated[Literal["glomeruli-pas"], *_positional("{glomeruli-pas}")]


@dataclasses.dataclass(frozen=True)
class DataCheckConfig(StepConfig):
    """Validate a manifest; report every problem with its row and file."""

    manifest: ManifestArg  # manifest CSV (columns path,label,slide[,patient,center,split,mask])
    positive_label: str = DEFAULT_POSITIVE  # positive class name (default: the one dataset.json beside it names)
    negative_label: str | None = None  # negative class name (default M0 for M1, else the manifest's other label)
    unlabeled: bool = False  # labels may be empty (SSL data)
    folds: NonNegativeInt = 5  # check slide-grouped CV with N folds is possible (each class on >= N slides); 0 = skip
    quick: bool = False  # check file headers/trailers only, do not decode pixels
    skip_bad: bool = False  # drop bad rows instead of failing; write them with reasons to --skipped-out
    skipped_out: str | None = None  # CSV for skipped rows (default: <out or manifest stem>.skipped.csv beside it)
    out: str | None = None  # write the checked (cleaned with --skip-bad, renamed with --label-map) manifest here
    label_map: str = ""  # rename label values to class names, e.g. 1=GS,0=nonGS (needs --out; recorded there)

    def validate(self) -> None:
        if self.label_map:
            try:
                parse_label_map(self.label_map)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if not self.out:
                raise ConfigError("--label-map writes a new manifest with the class names: pass --out NEW.csv.")


@dataclasses.dataclass(frozen=True)
class FromFolderConfig(StepConfig):
    """Build a manifest from <root>/<label>/*.png (sub-folders walked; hidden and macOS ._ files ignored)."""

    root: RootArg  # folder with one sub-folder per label (its name, exactly, is the label)
    out: str  # manifest CSV to write (never overwritten)
    slide_regex: str = DEFAULT_SLIDE_REGEX  # regex on the file name (no extension); group 'slide' (or 1) = slide ID
    center_regex: str | None = None  # regex searched in the slide ID; group 'center' (or 1) = centre, e.g. '^([^_]+)_'
    extensions: list[str] = dataclasses.field(default_factory=lambda: list(IMAGE_EXTENSIONS))  # image file extensions
    positive_label: str = ""  # positive class; written to dataset.json beside the manifest for every step


@dataclasses.dataclass(frozen=True)
class FetchConfig(StepConfig):
    """Fetch a public dataset (mirror or download), verify it, write a manifest."""

    dataset: DatasetArg  # the public dataset
    mirror: str | None = None  # local copy (else $GLOMLIB_MIRROR, else ../shared/data/glomeruli-pas, else download)
    no_mirror: bool = False  # ignore mirrors and download
    out: str = str(DEFAULT_MANIFEST.parent)  # output folder for manifest.csv
    url: str | None = None  # archive URL (default: GitHub archive of the pinned commit)
    sums: str | None = None  # sha256sum-format list (default: the project's upstream list)


@dataclasses.dataclass(frozen=True)
class ApplyReviewConfig(StepConfig):
    """Apply a filled review.csv (glomlib review) to a manifest -> a NEW manifest."""

    # fmt: off
    review: tyro.conf.Positional[str]  # review.csv with reviewed_label (a manifest label, 'unsure', or empty) and comment
    # fmt: on
    manifest: str  # the manifest the review was made from (never changed)
    out: str  # the new manifest to write (must not exist)
    reviewer: str | None = None  # who reviewed (unless the review has a 'reviewer' column)
    date: str | None = None  # review date (default: today, UTC, YYYY-MM-DD)
    rater: str | None = None  # write the labels into label_<rater> instead of label


def _err(*a) -> None:
    print(*a, file=sys.stderr)


def _problems_exit(problems: list, skip_bad: bool) -> int | None:
    """1 when the errors found stop the check (all of them without --skip-bad, else the unskippable ones)."""
    errors = errors_of(problems)
    fatal = [p for p in errors if not p.skippable or not p.row]
    if errors and not skip_bad:
        rows = len({p.row for p in errors if p.row})
        skip = " (they are written with their reasons to a CSV file)" if len(fatal) < len(errors) else ""
        _err(
            f"\n{len(errors)} error(s)"
            + (f" in {rows} row(s)" if rows else "")
            + (f"; fix them, or re-run with --skip-bad to drop bad rows{skip}." if skip else "; fix them.")
        )
        return 1
    if fatal:
        _err(f"\n{len(fatal)} problem(s) above concern the whole manifest or several rows and cannot be skipped.")
        return 1
    return None


def _skip_bad(cfg: DataCheckConfig, path: Path, df, errors: list):
    """The rows without errors; the others written with their reasons beside --out (or the manifest)."""
    base = Path(cfg.out) if cfg.out else path
    skipped_out = Path(cfg.skipped_out) if cfg.skipped_out else base.resolve().parent / f"{base.stem}.skipped.csv"
    write_skipped(errors, df, skipped_out)
    bad = {p.row for p in errors}
    _err(f"skipped {len(bad)} bad row(s) of {len(df)}; rows and reasons written to {skipped_out}")
    return df[~df["row"].isin(bad)].reset_index(drop=True)


def _folds_exit(cfg: DataCheckConfig, path: Path, good) -> int | None:
    if cfg.unlabeled or not cfg.folds:
        return None
    from glomlib.data.splits import fold_problems

    why = fold_problems(good, cfg.folds)
    if why:
        _err(
            f"error: {path} cannot be used for slide-grouped {cfg.folds}-fold cross-validation (fine-tuning):\n  - "
            + "\n  - ".join(why)
            + "\n(--folds N checks another number of folds; --unlabeled for SSL-only data)"
        )
        return 1
    return None


def _write_out(cfg: DataCheckConfig, path: Path, good, attrs: dict) -> int | None:
    """The checked manifest at --out; its dataset.json travels along (with the --label-map, recorded)."""
    try:
        out = write_manifest(good, cfg.out)
        info = read_dataset_info(path)
        if cfg.label_map:
            pair = {
                "positive_label": attrs.get("positive_label") or "",
                "negative_label": attrs.get("negative_label") or "",
            }
            info = {**info, **pair, "label_map": attrs["label_map"], "label_map_from": str(path.resolve())}
        if info:
            write_dataset_info(out, **info)
    except FileExistsError as e:
        _err(f"error: {e}")
        return EXIT_EXISTS
    _err(
        f"wrote {len(good)} rows to {out}" + (f" (labels renamed by --label-map {cfg.label_map})" * bool(cfg.label_map))
    )
    return None


def check(cfg: DataCheckConfig) -> int:
    path = Path(cfg.manifest)
    try:
        df, problems = validate_manifest(
            path,
            positive_label=cfg.positive_label,
            negative_label=cfg.negative_label,
            require_labels=not cfg.unlabeled,
            full=not cfg.quick,
            label_map=parse_label_map(cfg.label_map) if cfg.label_map else None,
        )
    except ManifestError as e:
        _err(f"error: {e}")
        return 1
    if problems:
        _err(format_problems(problems, path))
    stop = _problems_exit(problems, cfg.skip_bad)
    if stop:
        return stop
    attrs = dict(df.attrs)
    good = _skip_bad(cfg, path, df, errors_of(problems)) if cfg.skip_bad else df
    if len(good) == 0:
        _err("nothing left after skipping bad rows")
        return 1
    stop = _folds_exit(cfg, path, good) or (_write_out(cfg, path, good, attrs) if cfg.out else None)
    if stop:
        return stop
    labels = good["label"].value_counts().to_dict()
    _err(
        f"OK: {len(good)} images, labels {labels}, {good['slide'].nunique()} slides, {good['patient'].nunique()} patients, centres {sorted(set(good['center']) - {''}) or '-'}, fingerprint {data_fingerprint(good)}"
    )
    return 0


def _scan(cfg: FromFolderConfig):
    """The folder's rows and notes, or the exit code of what stops it (printed)."""
    try:
        exts = tuple(cfg.extensions)  # the one comma-list parser: glomlib.core.config
        df, notes = scan_folder(cfg.root, slide_regex=cfg.slide_regex, center_regex=cfg.center_regex, extensions=exts)
    except re.error as e:
        _err(f"error: a regular expression (--slide-regex / --center-regex) is not valid: {e}")
        return 2  # usage error, as documented
    except (FileNotFoundError, ValueError) as e:
        _err(f"error: {e}")
        return 1
    for note in notes:
        _err(f"note: {note}")
    return df


def _label_pair_exit(cfg: FromFolderConfig, labels: list[str]) -> int | None:
    """1 (printed) when a folder name cannot be a label or --positive-label does not name one of a pair."""
    why = label_folder_problems(labels)
    pos = cfg.positive_label
    if pos and pos not in labels:
        why.append(f"--positive-label {pos!r} is not a label folder ({labels})")
    elif pos and len(labels) != 2:
        why.append(
            f"{len(labels)} label folders {labels}: --positive-label needs exactly two (positive and negative); move the others out"
        )
    for w in why:
        _err(f"error: {w}")
    return 1 if why else None


def from_folder(cfg: FromFolderConfig) -> int:
    df = _scan(cfg)
    if isinstance(df, int):
        return df
    labels = sorted(df["label"].unique())
    stop = _label_pair_exit(cfg, labels)
    if stop:
        return stop
    try:  # identical content is fine (idempotent); anything else is refused
        m = write_manifest(df, cfg.out)
        if cfg.positive_label:  # the dataset names its positive class once, for every step
            side = write_dataset_info(m, cfg.positive_label, next(x for x in labels if x != cfg.positive_label))
    except FileExistsError as e:
        _err(f"error: {e}")
        return EXIT_EXISTS
    counts = df["label"].value_counts().to_dict()
    _err(f"wrote {m}: {len(df)} images, labels {counts}, {df['slide'].nunique()} slides")
    if len(labels) > 2:
        _err(f"note: {len(labels)} label folders; binary tasks use a positive and one negative label")
    if cfg.positive_label:
        _err(f"wrote {side}: positive label {cfg.positive_label!r}")
    pos = cfg.positive_label or ("M1" if "M1" in labels else labels[0])
    _, problems = validate_manifest(m, positive_label=pos, full=False)
    if problems:
        _err(format_problems(problems, m))
    return 1 if errors_of(problems) else 0


def fetch(cfg: FetchConfig) -> int:
    from glomlib.data.public import DatasetError, fetch_glomeruli_pas

    mirror = False if cfg.no_mirror else cfg.mirror
    try:
        fetch_glomeruli_pas(out=cfg.out, mirror=mirror, url=cfg.url, sums=cfg.sums, progress=True)
    except (DatasetError, FileExistsError, OSError) as e:
        _err(f"error: {e}")
        return 1
    return 0


def apply_review(cfg: ApplyReviewConfig) -> int:
    from glomlib.data.relabel import ReviewError, summary_text
    from glomlib.data.relabel import apply_review as apply

    try:
        s = apply(
            cfg.review, cfg.manifest, cfg.out, reviewer=cfg.reviewer or "", date=cfg.date or "", rater=cfg.rater or ""
        )
    except FileExistsError as e:
        _err(f"error: {e}")
        return EXIT_EXISTS
    except (ReviewError, ManifestError) as e:
        _err(f"error: {e}")
        return 1
    _err(summary_text(s))
    return 0
