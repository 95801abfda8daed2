"""Tables in words: chosen columns renamed to words with units, formatted per column, no index, no NaN."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

from glomlib.publish.present.numbers import MISSING, _absent

_CSS = (
    "<style>table.glom-t{border-collapse:collapse;margin:.4em 0 1em;font-size:.92em}"
    "table.glom-t th,table.glom-t td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left!important}"
    "table.glom-t td.n{text-align:right!important;font-variant-numeric:tabular-nums}"
    "table.glom-t caption{caption-side:bottom;text-align:left;color:#555;font-size:.9em;padding-top:.3em}"
    "</style>"
)


class Html(str):
    """An HTML fragment that Jupyter renders (and that still compares and prints as a string)."""

    def _repr_html_(self) -> str:
        return str(self)


def _cell(value: Any, fmt: Callable[[Any], str] | None, missing: str) -> tuple[str, bool]:
    if fmt is not None:
        return fmt(value), True
    if isinstance(value, float):
        return (missing, False) if _absent(value) else (f"{value:.3f}", True)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}", True
    return (missing if value is None else str(value)), False


def table(
    rows: Any,
    columns: Mapping[str, str],
    formats: Mapping[str, Callable[[Any], str]] | None = None,
    caption: str = "",
    missing: str = MISSING,
) -> Html:
    """An HTML table of ``rows`` (a DataFrame or a list of dicts) with only ``columns`` (source name -> header in
    words, in that order). ``formats`` maps a source column to one of :mod:`.numbers`' formatters; floats default to
    3 decimals, ints to integers, a missing value to ``missing``. ``caption`` says what the table holds and why a
    value may be absent."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    unknown = [c for c in columns if records and c not in records[0]]
    if unknown:
        raise KeyError(f"table: no column {unknown} in the rows (columns: {list(records[0])})")
    formats = formats or {}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = []
    for rec in records:
        cells = []
        for col in columns:
            text, numeric = _cell(rec.get(col), formats.get(col), missing)
            cells.append(f"<td{' class=n' if numeric else ''}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return Html(
        f'{_CSS}<table class="glom-t">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )
