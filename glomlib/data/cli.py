"""``glomlib data ...``: check a manifest, build one from a folder, fetch a public dataset.

    glomlib data check MANIFEST [--positive-label LABEL] [--skip-bad [--skipped-out CSV]] [--out CLEAN.csv]
    glomlib data from-folder ROOT --out manifest.csv [--positive-label LABEL] [--slide-regex REGEX] ...
    glomlib data fetch glomeruli-pas [--mirror DIR | --no-mirror] [--out DIR]
    glomlib data apply-review REVIEW.csv --manifest M.csv --out M2.csv [--reviewer NAME] [--date YYYY-MM-DD]

Exit status: 0 = fine (warnings allowed), 1 = problems found, 2 = usage error, 3 = the output exists. No torch
import here.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from glomlib.core.paths import DEFAULT_MANIFEST
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
from glomlib.data.manifest.problems import errors_of

DEFAULT_SLIDE_REGEX = r"^(?P<slide>.+)-[^-]+$"


def _err(*a) -> None:
    print(*a, file=sys.stderr)


def _problems_exit(problems: list, skip_bad: bool) -> int | None:
    """1 when the errors found stop the check (all of them without --skip-bad, else the unskippable ones)."""
    errors = errors_of(problems)
    fatal = [p for p in errors if not p.skippable or not p.row]
    if errors and not skip_bad:
        rows = len({p.row for p in errors if p.row})
        _err(
            f"\n{len(errors)} error(s)"
            + (f" in {rows} row(s)" if rows else "")
            + "; fix them, or re-run with --skip-bad to drop bad rows (they are written with their reasons to a CSV file)."
        )
        return 1
    if fatal:
        _err(f"\n{len(fatal)} problem(s) above concern the whole manifest or several rows and cannot be skipped.")
        return 1
    return None


def _skip_bad(args, path: Path, df, errors: list):
    """The rows without errors; the others written with their reasons beside --out (or the manifest)."""
    out_dir = Path(args.out).resolve().parent if args.out else path.resolve().parent
    stem = Path(args.out).stem if args.out else path.stem
    skipped_out = Path(args.skipped_out) if args.skipped_out else out_dir / f"{stem}.skipped.csv"
    write_skipped(errors, df, skipped_out)
    bad = {p.row for p in errors}
    _err(f"skipped {len(bad)} bad row(s) of {len(df)}; rows and reasons written to {skipped_out}")
    return df[~df["row"].isin(bad)].reset_index(drop=True)


def _folds_exit(args, path: Path, good) -> int | None:
    folds = int(getattr(args, "folds", 0) or 0)
    if args.unlabeled or not folds:
        return None
    from glomlib.data.splits import fold_problems

    why = fold_problems(good, folds)
    if why:
        _err(
            f"error: {path} cannot be used for slide-grouped {folds}-fold cross-validation (fine-tuning):\n  - "
            + "\n  - ".join(why)
            + "\n(--folds N checks another number of folds; --unlabeled for SSL-only data)"
        )
        return 1
    return None


def _write_out(args, path: Path, good) -> int | None:
    try:
        out = write_manifest(good, args.out)
        info = read_dataset_info(path)
        if info:  # the cleaned manifest is the same dataset: its dataset.json travels along
            write_dataset_info(out, **info)
    except FileExistsError as e:
        _err(f"error: {e}")
        return 3  # the documented "output exists" code (glomlib --help)
    _err(f"wrote {len(good)} rows to {out}")
    return None


def check(args) -> int:
    path = Path(args.manifest)
    try:
        df, problems = validate_manifest(
            path,
            positive_label=args.positive_label,
            negative_label=args.negative_label,
            require_labels=not args.unlabeled,
            full=not args.quick,
        )
    except ManifestError as e:
        _err(f"error: {e}")
        return 1
    if problems:
        _err(format_problems(problems, path))
    stop = _problems_exit(problems, args.skip_bad)
    if stop:
        return stop
    good = _skip_bad(args, path, df, errors_of(problems)) if args.skip_bad else df
    if len(good) == 0:
        _err("nothing left after skipping bad rows")
        return 1
    stop = _folds_exit(args, path, good) or (_write_out(args, path, good) if args.out else None)
    if stop:
        return stop
    labels = good["label"].value_counts().to_dict()
    _err(
        f"OK: {len(good)} images, labels {labels}, {good['slide'].nunique()} slides, {good['patient'].nunique()} patients, centres {sorted(set(good['center']) - {''}) or '-'}, fingerprint {data_fingerprint(good)}"
    )
    return 0


def manifest_from_folder(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    slide_regex: str = DEFAULT_SLIDE_REGEX,
    center_regex: str | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> Path:
    """Write a manifest for ``<root>/<label>/*.<ext>``: label = folder name, slide = the ``slide`` group
    (or group 1) of ``slide_regex`` matched on the file name without extension, center = group 1 (or
    ``center``) of ``center_regex`` searched in the slide ID. Refuses to overwrite a different manifest.
    Raises ValueError listing every file whose name does not match."""
    import pandas as pd

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected <root>/<label>/*.png")
    rx = re.compile(slide_regex)
    crx = re.compile(center_regex) if center_regex else None
    rows, bad = [], []
    label_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    for d in label_dirs:
        for f in sorted(d.iterdir()):
            if not f.is_file() or f.suffix.lower() not in exts:
                continue
            m = rx.match(f.stem)
            if not m:
                bad.append(str(f))
                continue
            slide = m.group("slide") if "slide" in rx.groupindex else m.group(1 if rx.groups else 0)
            row = {"path": str(f), "label": d.name, "slide": slide}
            if crx is not None:
                cm = crx.search(slide)
                row["center"] = (
                    ""
                    if not cm
                    else cm.group("center")
                    if "center" in crx.groupindex
                    else cm.group(1 if crx.groups else 0)
                )
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
    return write_manifest(pd.DataFrame(rows), out)


def from_folder(args) -> int:
    out = Path(args.out)  # identical content is fine (idempotent); anything else is refused
    try:
        exts = tuple(e.strip() for e in args.extensions.split(",") if e.strip())
        m = manifest_from_folder(
            args.root, out, slide_regex=args.slide_regex, center_regex=args.center_regex, extensions=exts
        )
    except FileExistsError as e:
        _err(f"error: {e}")
        return 3  # the documented "output exists" code (glomlib --help)
    except re.error as e:
        _err(f"error: a regular expression (--slide-regex / --center-regex) is not valid: {e}")
        return 2  # usage error, as documented
    except (FileNotFoundError, ValueError) as e:
        _err(f"error: {e}")
        return 1
    import pandas as pd

    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    labels = df["label"].value_counts().to_dict()
    _err(f"wrote {m}: {len(df)} images, labels {labels}, {df['slide'].nunique()} slides")
    pos = args.positive_label or ("M1" if "M1" in labels else sorted(labels)[0])
    if len(labels) > 2:
        _err(f"note: {len(labels)} label folders; binary tasks use a positive and one negative label")
    if args.positive_label:  # the dataset names its positive class once, for every step
        if args.positive_label not in labels:
            _err(f"error: --positive-label {args.positive_label!r} is not a label folder ({sorted(labels)})")
            return 1
        others = sorted(set(labels) - {args.positive_label})
        try:
            side = write_dataset_info(m, args.positive_label, others[0] if len(others) == 1 else "")
        except FileExistsError as e:
            _err(f"error: {e}")
            return 3  # the documented "output exists" code (glomlib --help)
        _err(f"wrote {side}: positive label {args.positive_label!r}")
    df2, problems = validate_manifest(m, positive_label=pos, full=False)
    if problems:
        _err(format_problems(problems, m))
    return 1 if any(p.severity == "error" for p in problems) else 0


def fetch(args) -> int:
    from glomlib.data.public import DatasetError, fetch_glomeruli_pas

    mirror = False if args.no_mirror else args.mirror
    try:
        fetch_glomeruli_pas(out=args.out, mirror=mirror, url=args.url, sums=args.sums, progress=True)
    except (DatasetError, FileExistsError, OSError) as e:
        _err(f"error: {e}")
        return 1
    return 0


def apply_review_cmd(args) -> int:
    from glomlib.data.relabel import ReviewError, apply_review, summary_text

    try:
        s = apply_review(
            args.review,
            args.manifest,
            args.out,
            reviewer=args.reviewer or "",
            date=args.date or "",
            rater=args.rater or "",
        )
    except FileExistsError as e:
        _err(f"error: {e}")
        return 3  # the documented "output exists" code (glomlib --help)
    except (ReviewError, ManifestError) as e:
        _err(f"error: {e}")
        return 1
    _err(summary_text(s))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="check a manifest, build one from a folder, fetch a public dataset",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    for add in (_register_check, _register_from_folder, _register_fetch, _register_apply_review):
        add(sub)


def _register_check(sub) -> None:
    c = sub.add_parser("check", help="validate a manifest; report every problem with its row and file")
    c.add_argument("manifest", help="manifest CSV (columns path,label,slide[,patient,center,split,mask])")
    c.add_argument(
        "--positive-label",
        default=DEFAULT_POSITIVE,
        help="positive class name (default: the one named by dataset.json beside the manifest)",
    )
    c.add_argument(
        "--negative-label",
        default=None,
        help="negative class name (default M0 for M1, else the manifest's other label)",
    )
    c.add_argument("--unlabeled", action="store_true", help="labels may be empty (SSL data)")
    c.add_argument(
        "--folds",
        type=int,
        default=5,
        help="check that slide-grouped cross-validation with this many folds is possible: two classes, at least this many slides, each class on at least this many slides (default 5; 0 = skip)",
    )
    c.add_argument("--quick", action="store_true", help="check file headers/trailers only, do not decode pixels")
    c.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop bad rows instead of failing; write them with reasons to --skipped-out",
    )
    c.add_argument(
        "--skipped-out",
        default=None,
        help="CSV for skipped rows (default: <out or manifest stem>.skipped.csv beside it)",
    )
    c.add_argument("--out", default=None, help="write the checked (cleaned with --skip-bad) manifest here")
    c.set_defaults(func=check)


def _register_from_folder(sub) -> None:
    f = sub.add_parser("from-folder", help="build a manifest from <root>/<label>/*.png")
    f.add_argument("root", help="folder with one sub-folder per label")
    f.add_argument("--out", required=True, help="manifest CSV to write (never overwritten)")
    f.add_argument(
        "--slide-regex",
        default=DEFAULT_SLIDE_REGEX,
        help=f"regex on the file name without extension; group 'slide' (or 1) is the slide ID (default {DEFAULT_SLIDE_REGEX!r}: '<slide>-<index>')",
    )
    f.add_argument(
        "--center-regex",
        default=None,
        help="optional regex searched in the slide ID; group 'center' (or 1) is the centre, e.g. '^([^_]+)_'",
    )
    f.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS), help="image file extensions")
    f.add_argument(
        "--positive-label",
        default=None,
        help="positive class; written to dataset.json beside the manifest so every step knows it",
    )
    f.set_defaults(func=from_folder)


def _register_fetch(sub) -> None:
    g = sub.add_parser("fetch", help="fetch a public dataset (mirror or download), verify it, write a manifest")
    g.add_argument("dataset", choices=["glomeruli-pas"])
    g.add_argument(
        "--mirror",
        default=None,
        help="local copy (else $GLOMLIB_MIRROR, else ../shared/data/glomeruli-pas, else download)",
    )
    g.add_argument("--no-mirror", action="store_true", help="ignore mirrors and download")
    g.add_argument(
        "--out", default=str(DEFAULT_MANIFEST.parent), help="output folder for manifest.csv (default %(default)s)"
    )
    g.add_argument("--url", default=None, help="archive URL (default: GitHub archive of the pinned commit)")
    g.add_argument("--sums", default=None, help="sha256sum-format list (default: the project's upstream list)")
    g.set_defaults(func=fetch)


def _register_apply_review(sub) -> None:
    r = sub.add_parser(
        "apply-review", help="apply a filled review.csv (glomlib review) to a manifest -> a NEW manifest"
    )
    r.add_argument("review", help="review.csv with reviewed_label (a manifest label, 'unsure', or empty) and comment")
    r.add_argument("--manifest", required=True, help="the manifest the review was made from (never changed)")
    r.add_argument("--out", required=True, help="the new manifest to write (must not exist)")
    r.add_argument("--reviewer", default=None, help="who reviewed (unless the review has a 'reviewer' column)")
    r.add_argument("--date", default=None, help="review date (default: today, UTC, YYYY-MM-DD)")
    r.add_argument("--rater", default=None, help="write the labels into label_<rater> instead of label")
    r.set_defaults(func=apply_review_cmd)
