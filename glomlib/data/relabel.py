"""Apply a pathologist's label review (a filled ``review.csv``) to a manifest, writing a NEW manifest with a record.

``glomlib review`` writes ``review.csv`` with empty ``reviewed_label`` and ``comment`` columns. The
pathologist fills ``reviewed_label`` (a label of the manifest, or ``unsure``; empty = not reviewed) and
optionally ``comment`` (and ``reviewer`` per row). :func:`apply_review` then writes a new manifest:

- every column of the old manifest is kept (paths re-written relative to the new manifest's folder);
- reviewed rows get the new label (in ``label``, or in ``label_<rater>`` with ``rater=``) and the record columns
  ``review_label_before``, ``review_decision`` (``changed`` / ``confirmed`` / ``unsure``), ``review_reviewer``,
  ``review_date`` and ``review_comment``;
- a sidecar ``<new manifest>.review.json`` lists the same changes, the review file and the sha256 of the old
  manifest (which is never modified; an existing output is never overwritten).

Rows are matched by ``path`` (absolute, or relative to the review file's folder) when the review has one, else
by ``image_id`` (the leading hex digits of the image file's sha256), which survives pseudonymised review sheets.
Every problem (unknown image, ambiguous id, a label outside the label set, one image reviewed twice with
different labels, no reviewer) is reported at once with its review-file row; nothing is applied then.

This module does not import torch.
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


def _read_review(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ReviewError(f"review file {path} does not exist.")
    try:
        r = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReviewError(f"review file {path} is not a readable CSV file: {e}") from None
    r.columns = [str(c).strip().lower() for c in r.columns]
    if "reviewed_label" not in r.columns or not ({"path", "image_id"} & set(r.columns)):
        raise ReviewError(f"review file {path} needs a 'reviewed_label' column and a 'path' or 'image_id' column "
                          f"(as written by glomlib review); its columns are {list(r.columns)}.")
    return r


def apply_review(review_csv: str | os.PathLike, manifest: str | os.PathLike, out: str | os.PathLike, *,
                 reviewer: str = "", date: str = "", rater: str = "") -> dict:
    """Write ``out`` (a new manifest) = ``manifest`` with the reviewed labels and the record; returns the summary
    (also written to ``<out>.review.json``). Raises :class:`ReviewError` or FileExistsError; writes nothing then."""
    review_csv, manifest, out = (Path(p).expanduser().resolve() for p in (review_csv, manifest, out))
    sidecar = out.with_name(out.name + ".review.json")
    for p in (out, sidecar):
        if p.exists():
            raise FileExistsError(f"{p} already exists; apply-review never overwrites. Choose another --out.")
    if out == manifest:
        raise FileExistsError("--out must differ from --manifest: the old manifest is never changed.")
    date = date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    raw = _read_csv(manifest)
    df, problems = validate_manifest(manifest, positive_label="", require_labels=False)
    fatal = [p for p in problems if p.kind in ("missing-column", "empty-manifest")]
    if fatal:
        raise ReviewError("; ".join(p.format() for p in fatal))
    target = "label"
    if rater:
        from glomlib.data.raters import rater_column

        try:
            target = rater_column(raw, rater)
        except ValueError as e:
            raise ReviewError(str(e)) from None
    if target not in raw.columns:
        raw[target] = ""
    label_set = sorted({str(v).strip() for v in raw[target]} - {""})
    rv = _read_review(review_csv)

    by_path = {p: i for i, p in enumerate(df["path"]) if p}
    sha = list(df["sha256"]) if "sha256" in df.columns else [""] * len(df)
    errors: list[str] = []
    decided: dict[int, tuple[int, str, str, str]] = {}  # manifest index -> (review row, label, reviewer, comment)
    n_empty = 0
    for k, r in rv.iterrows():
        row = k + 1
        lab = str(r.get("reviewed_label", "")).strip()
        if not lab:
            n_empty += 1
            continue
        p = str(r.get("path", "")).strip()
        iid = str(r.get("image_id", "")).strip().lower()
        if p:
            q = Path(os.path.expanduser(p))
            q = q if q.is_absolute() else review_csv.parent / q
            i = by_path.get(os.path.normpath(str(q)))
            if i is None:
                errors.append(f"review row {row}: image {p} is not in manifest {manifest}")
                continue
        elif iid:
            hits = [j for j, h in enumerate(sha) if h and h.startswith(iid)]
            if len(hits) != 1:
                errors.append(f"review row {row}: image_id {iid} matches {len(hits)} images of {manifest} "
                              f"({'none' if not hits else 'identical files: ' + ', '.join(str(j + 1) for j in hits)})")
                continue
            i = hits[0]
        else:
            errors.append(f"review row {row}: neither path nor image_id is given")
            continue
        if lab.lower() == UNSURE:
            lab = UNSURE
        elif lab not in label_set:
            errors.append(f"review row {row}: reviewed_label {lab!r} is not a label of the manifest "
                          f"({', '.join(label_set)}) nor '{UNSURE}'")
            continue
        who = str(r.get("reviewer", "")).strip() or reviewer
        if not who:
            errors.append(f"review row {row}: no reviewer; pass --reviewer NAME or fill the 'reviewer' column")
            continue
        if i in decided and decided[i][1] != lab:
            errors.append(f"review row {row}: the same image was reviewed as {decided[i][1]!r} in review row "
                          f"{decided[i][0]} and as {lab!r} here")
            continue
        decided[i] = (row, lab, who, str(r.get("comment", "")).strip())
    if errors:
        raise ReviewError(f"{len(errors)} problem(s) in review file {review_csv}; nothing was applied:\n"
                          + "\n".join("  " + e for e in errors))

    new = raw.copy()
    for c in ("path", "mask"):  # relative paths stay valid from the new manifest's folder
        if c in new.columns:
            new[c] = [os.path.relpath(os.path.normpath(str(manifest.parent / v.strip())), out.parent)
                      if v.strip() and not os.path.isabs(os.path.expanduser(v.strip())) else v for v in new[c]]
    for c in RECORD_COLUMNS:
        if c not in new.columns:
            new[c] = ""
    changes, counts = [], {"changed": 0, "confirmed": 0, "unsure": 0}
    for i, (row, lab, who, comment) in sorted(decided.items()):
        before = str(raw.at[i, target]).strip()
        decision = UNSURE if lab == UNSURE else ("confirmed" if lab == before else "changed")
        counts[decision] += 1
        if decision == "changed":
            new.at[i, target] = lab
        new.loc[i, RECORD_COLUMNS] = [before, decision, who, date, comment]
        changes.append({"manifest_row": i + 1, "review_row": row, "path": str(df.at[i, "path"]),
                        "column": target, "before": before, "after": lab if decision == "changed" else before,
                        "decision": decision, "reviewer": who, "date": date, "comment": comment})
    moves = pd.Series([f"{c['before']} -> {c['after']}" for c in changes if c["decision"] == "changed"],
                      dtype=object).value_counts().to_dict()
    summary = {"manifest": str(manifest), "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
               "review": str(review_csv), "out": str(out), "column": target, "date": date,
               "rows": len(new), "review_rows": len(rv), "not_reviewed": n_empty, **counts,
               "label_moves": moves, "changes": changes}
    publish_new(out, lambda tmp: new.to_csv(tmp, index=False, lineterminator="\n"))
    publish_new(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def summary_text(s: dict) -> str:
    """A few lines for the terminal."""
    moves = ", ".join(f"{k}: {v}" for k, v in s["label_moves"].items()) or "none"
    return (f"wrote {s['out']} ({s['rows']} rows; the old manifest is unchanged)\n"
            f"review {s['review']}: {s['review_rows']} rows, {s['not_reviewed']} not reviewed\n"
            f"{s['changed']} label(s) changed in column {s['column']!r} ({moves}), {s['confirmed']} confirmed, "
            f"{s['unsure']} unsure\nrecord: columns {', '.join(RECORD_COLUMNS)} and {s['out']}.review.json")
