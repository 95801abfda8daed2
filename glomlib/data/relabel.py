"""Apply a pathologist's label review (a filled ``review.csv`` of ``glomlib review``) to a manifest -> a NEW manifest.

``reviewed_label`` holds a label of the manifest, ``unsure`` or nothing (not reviewed); ``comment`` and a per-row
``reviewer`` are optional. The new manifest keeps every column (paths re-written relative to its folder), puts the
new labels in ``label`` (or ``label_<rater>``) and records ``review_label_before``, ``review_decision``
(changed / confirmed / unsure), ``review_reviewer``, ``review_date`` and ``review_comment``; ``<new>.review.json``
lists the changes and the old manifest's sha256. The old manifest is never modified, an output never overwritten.
Rows are matched by ``path``, else by ``image_id`` (leading hex digits of the file's sha256, which survives
pseudonymised sheets). Every problem is reported at once with its review row; nothing is applied then.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from glomlib.core.io import publish_new
from glomlib.data.manifest import _read_csv, validate_manifest

UNSURE = "unsure"
RECORD_COLUMNS = ["review_label_before", "review_decision", "review_reviewer", "review_date", "review_comment"]


class ReviewError(ValueError):
    """The review file cannot be applied; the message lists every problem with its row."""

    exit_code = 1  # glomlib.cli's exit-code table


def _read_review(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ReviewError(f"review file {path} does not exist.")
    try:
        r = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReviewError(f"review file {path} is not a readable CSV file: {e}") from None
    r.columns = [str(c).strip().lower() for c in r.columns]
    if "reviewed_label" not in r.columns or not ({"path", "image_id"} & set(r.columns)):
        raise ReviewError(
            f"review file {path} needs a 'reviewed_label' column and a 'path' or 'image_id' column (as written by glomlib review); its columns are {list(r.columns)}."
        )
    return r


def _manifest_row(r: pd.Series, row: int, by_path: dict, sha: list, review_csv: Path, manifest: Path):
    """``(manifest index, None)`` of the image a review row names (by path, else image_id), or ``(None, why)``."""
    p = str(r.get("path", "")).strip()
    iid = str(r.get("image_id", "")).strip().lower()
    if p:
        q = Path(os.path.expanduser(p))
        i = by_path.get(os.path.normpath(str(q if q.is_absolute() else review_csv.parent / q)))
        return (i, None) if i is not None else (None, f"review row {row}: image {p} is not in manifest {manifest}")
    if not iid:
        return None, f"review row {row}: neither path nor image_id is given"
    hits = [j for j, h in enumerate(sha) if h and h.startswith(iid)]
    if len(hits) == 1:
        return hits[0], None
    return None, (
        f"review row {row}: image_id {iid} matches {len(hits)} images of {manifest} ({'none' if not hits else 'identical files: ' + ', '.join(str(j + 1) for j in hits)})"
    )


def _decisions(
    rv: pd.DataFrame, df: pd.DataFrame, label_set: list[str], reviewer: str, review_csv: Path, manifest: Path
) -> tuple[dict[int, tuple[int, str, str, str]], int]:
    """manifest index -> (review row, label, reviewer, comment), and the number of rows not reviewed. Raises
    :class:`ReviewError` listing every problem."""
    by_path = {p: i for i, p in enumerate(df["path"]) if p}
    sha = list(df["sha256"]) if "sha256" in df.columns else [""] * len(df)
    errors: list[str] = []
    decided: dict[int, tuple[int, str, str, str]] = {}
    n_empty = 0
    for k, r in rv.iterrows():
        row, lab = k + 1, str(r.get("reviewed_label", "")).strip()
        if not lab:
            n_empty += 1
            continue
        i, why = _manifest_row(r, row, by_path, sha, review_csv, manifest)
        lab = UNSURE if lab.lower() == UNSURE else lab
        who = str(r.get("reviewer", "")).strip() or reviewer
        if why is None and lab != UNSURE and lab not in label_set:
            why = f"review row {row}: reviewed_label {lab!r} is not a label of the manifest ({', '.join(label_set)}) nor '{UNSURE}'"
        elif why is None and not who:
            why = f"review row {row}: no reviewer; pass --reviewer NAME or fill the 'reviewer' column"
        elif why is None and i in decided and decided[i][1] != lab:
            why = f"review row {row}: the same image was reviewed as {decided[i][1]!r} in review row {decided[i][0]} and as {lab!r} here"
        if why:
            errors.append(why)
        else:
            decided[i] = (row, lab, who, str(r.get("comment", "")).strip())
    if errors:
        raise ReviewError(
            f"{len(errors)} problem(s) in review file {review_csv}; nothing was applied:\n"
            + "\n".join("  " + e for e in errors)
        )
    return decided, n_empty


def _relabelled(
    raw: pd.DataFrame, df: pd.DataFrame, decided: dict, target: str, date: str, manifest: Path, out: Path
) -> tuple[pd.DataFrame, list[dict]]:
    """The new manifest (paths valid from its folder, labels changed, record columns) and the list of changes."""
    new = raw.copy()
    for c in ("path", "mask"):  # relative paths stay valid from the new manifest's folder
        if c in new.columns:
            new[c] = [
                os.path.relpath(os.path.normpath(str(manifest.parent / v.strip())), out.parent)
                if v.strip() and not os.path.isabs(os.path.expanduser(v.strip()))
                else v
                for v in new[c]
            ]
    for c in RECORD_COLUMNS:
        if c not in new.columns:
            new[c] = ""
    changes = []
    for i, (row, lab, who, comment) in sorted(decided.items()):
        before = str(raw.at[i, target]).strip()
        decision = UNSURE if lab == UNSURE else ("confirmed" if lab == before else "changed")
        if decision == "changed":
            new.at[i, target] = lab
        new.loc[i, RECORD_COLUMNS] = [before, decision, who, date, comment]
        changes.append(
            {
                "manifest_row": i + 1,
                "review_row": row,
                "path": str(df.at[i, "path"]),
                "column": target,
                "before": before,
                "after": lab if decision == "changed" else before,
                "decision": decision,
                "reviewer": who,
                "date": date,
                "comment": comment,
            }
        )
    return new, changes


def _target_column(raw: pd.DataFrame, rater: str) -> str:
    if not rater:
        return "label"
    from glomlib.data.raters import rater_column

    try:
        return rater_column(raw, rater)
    except ValueError as e:
        raise ReviewError(str(e)) from None


def apply_review(
    review_csv: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    reviewer: str = "",
    date: str = "",
    rater: str = "",
) -> dict:
    """Write ``out`` (a new manifest) = ``manifest`` with the reviewed labels and the record; returns the summary
    (also written to ``<out>.review.json``). Raises :class:`ReviewError` or FileExistsError; writes nothing then."""
    review_csv, manifest, out = (Path(p).expanduser().resolve() for p in (review_csv, manifest, out))
    sidecar = out.with_name(out.name + ".review.json")
    for p in (out, sidecar):
        if p.exists():
            raise FileExistsError(f"{p} already exists; apply-review never overwrites. Choose another --out.")
    if out == manifest:
        raise FileExistsError("--out must differ from --manifest: the old manifest is never changed.")
    date = date or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    raw = _read_csv(manifest)
    df, problems = validate_manifest(manifest, positive_label="", require_labels=False)
    fatal = [p for p in problems if p.kind in ("missing-column", "empty-manifest")]
    if fatal:
        raise ReviewError("; ".join(p.format() for p in fatal))
    target = _target_column(raw, rater)
    if target not in raw.columns:
        raw[target] = ""
    label_set = sorted({str(v).strip() for v in raw[target]} - {""})
    rv = _read_review(review_csv)
    decided, n_empty = _decisions(rv, df, label_set, reviewer, review_csv, manifest)
    new, changes = _relabelled(raw, df, decided, target, date, manifest, out)
    counts = {d: sum(c["decision"] == d for c in changes) for d in ("changed", "confirmed", "unsure")}
    moves = (
        pd.Series([f"{c['before']} -> {c['after']}" for c in changes if c["decision"] == "changed"], dtype=object)
        .value_counts()
        .to_dict()
    )
    summary = {
        "manifest": str(manifest),
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "review": str(review_csv),
        "out": str(out),
        "column": target,
        "date": date,
        "rows": len(new),
        "review_rows": len(rv),
        "not_reviewed": n_empty,
        **counts,
        "label_moves": moves,
        "changes": changes,
    }
    publish_new(out, lambda tmp: new.to_csv(tmp, index=False, lineterminator="\n"))
    publish_new(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def summary_text(s: dict) -> str:
    """A few lines for the terminal."""
    moves = ", ".join(f"{k}: {v}" for k, v in s["label_moves"].items()) or "none"
    return f"wrote {s['out']} ({s['rows']} rows; the old manifest is unchanged)\nreview {s['review']}: {s['review_rows']} rows, {s['not_reviewed']} not reviewed\n{s['changed']} label(s) changed in column {s['column']!r} ({moves}), {s['confirmed']} confirmed, {s['unsure']} unsure\nrecord: columns {', '.join(RECORD_COLUMNS)} and {s['out']}.review.json"
