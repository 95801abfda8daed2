"""Which label values are class names, and the explicit mapping of those that are not.

A label must be a name ("GS", "nonGS", "M1"). Numbers (0/1), yes/no words (true/false, on/off) and missing-value
markers (NA, null) are not: YAML, papermill, pandas and JSON turn them into numbers, booleans or NaN on the way to a
notebook or a model file, so a run on them trains every fold and then fails (issue 19, defect 4). Such a manifest
is refused where it is read (``glomlib data check`` and every step), with the fix: ``--label-map 1=GS,0=nonGS``
writes a new manifest with names and records the mapping in its ``dataset.json``.
"""

from __future__ import annotations

import re

NOT_NAMES = {"true", "false", "yes", "no", "on", "off", "na", "n/a", "nan", "null", "none", "~"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def not_a_class_name(value: str) -> str | None:
    """Why ``value`` cannot be a class name (a number, a yes/no word, a missing-value marker), or None."""
    v = str(value).strip()
    if _NUMBER.match(v):
        return "a number"
    if v.lower() in NOT_NAMES:
        return "a yes/no or missing-value word"
    return None


def parse_label_map(text: str) -> dict[str, str]:
    """``"1=GS,0=nonGS"`` -> ``{"1": "GS", "0": "nonGS"}``; ValueError saying what is wrong."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        old, sep, new = (s.strip() for s in item.partition("="))
        if not sep or not old or not new:
            raise ValueError(f"--label-map item {item!r} is not VALUE=NAME (e.g. --label-map 1=GS,0=nonGS)")
        why = not_a_class_name(new)
        if why:
            raise ValueError(f"--label-map {item!r}: the new label {new!r} is {why}, not a class name")
        out[old] = new
    if not out:
        raise ValueError("--label-map is empty; spell it VALUE=NAME,... (e.g. --label-map 1=GS,0=nonGS)")
    return out


def map_hint(values: list[str]) -> str:
    """A ``--label-map`` to suggest for the values found: the likely positive one (1, true, yes) first."""
    ordered = sorted(values, key=lambda v: (v.strip().lower() not in ("1", "true", "yes", "on"), v))
    names = ["<positive>", "<negative>"] if len(ordered) == 2 else [f"<name{i}>" for i in range(1, len(ordered) + 1)]
    return ",".join(f"{v.strip()}={n}" for v, n in zip(ordered, names))
