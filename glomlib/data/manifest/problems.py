"""What a manifest check finds: :class:`Problem` (row, file, kind, message), the error, and their reports."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from glomlib.core.io import write_csv_atomic


class ManifestError(ValueError):
    """The manifest has problems. ``.problems`` holds every :class:`Problem`; the message lists them all."""

    exit_code = 1  # glomlib.cli's exit-code table

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
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


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def rows_text(idx: Iterable[int], limit: int = 30) -> str:
    r = [int(i) + 1 for i in idx]
    return ",".join(map(str, r[:limit])) + (f",... ({len(r)} rows)" if len(r) > limit else "")


def format_problems(problems: Sequence[Problem], path: str | os.PathLike = "", warn_limit: int = 20) -> str:
    """Human-readable report: every error on its own line; warnings grouped (first ``warn_limit`` each)."""
    errors = errors_of(problems)
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
            lines += ["  " + p.format() for p in ps[:warn_limit]]
            if len(ps) > warn_limit:
                lines.append(f"  ... and {len(ps) - warn_limit} more rows with: {msg}")
    return "\n".join(lines)


def write_skipped(problems: Sequence[Problem], df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write skipped rows (row, path, label, slide, reasons) to a CSV file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reasons: dict[int, list[str]] = {}
    for p in errors_of(problems):
        if p.row:
            reasons.setdefault(p.row, []).append(f"{p.kind}: {p.message}")
    cols = ["row", "path", "label", "slide", "reason"]
    rows = [
        {"row": r, **{c: df.iloc[r - 1].get(c, "") for c in cols[1:4]}, "reason": " | ".join(rs)}
        for r, rs in sorted(reasons.items())
    ]
    return write_csv_atomic(pd.DataFrame(rows, columns=cols), out)
