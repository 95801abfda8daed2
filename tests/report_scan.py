"""The report the way a reader meets it (issue 24, item 8): a page is read as the text a pathologist sees (no
<script>/<style>/<head>, hidden elements skipped, entities decoded; rendered markdown and outputs alike) and scanned
for developer leftovers: Python reprs, run and file paths, NaN, "0.0000", overlong decimals, float counts, pandas
index columns, code-name headers, missing or default alt text, "Written:"/"output folder:"/papermill lines, truncated
cells, a missing page summary, and the page sizes. Each finding names the page and quotes the snippet.

Used by tests/test_report_reader.py; run as a script on any report folder to list every leftover (exit 1 when there
is one): ``python tests/report_scan.py reports/<run>`` (``make report-check RUN=reports/<run>``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_ALT = "No description has been provided for this image"
PAGE_MB, TOTAL_MB, CSS_KB = 3.0, 8.0, 150  # issue 24: quick-cpu report <= 8 MB, no page over 3 MB
MAX_PER_CHECK = 8  # quotes per page and check (the rest are counted)

# check name -> [(what, pattern)]; patterns run on the visible text of a page
TEXT_PATTERNS: dict[str, list[tuple[str, re.Pattern]]] = {
    "python repr": [
        ("dict/list repr", re.compile(r"[{\[]'")),
        ("JSON", re.compile(r"[{\[]\s*\"[^\"\n]{1,40}\"\s*:\s")),
        ("path object", re.compile(r"\b(?:Posix|Windows|Pure\w*)Path\(")),
        ("dict view", re.compile(r"\bdict_(?:keys|values|items)\(")),
        ("array/tensor repr", re.compile(r"\b(?:array|tensor)\(\[")),
        ("object repr", re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>|<(?:Figure|Axes|matplotlib\.)[^>]{0,60}>")),
        ("pandas Series repr", re.compile(r"\b(?:Name: \w+, )?dtype: (?:object|int64|float64|bool|category)\b")),
        ("dataclass repr", re.compile(r"\b[A-Z][A-Za-z0-9]+\([a-z_]+=")),
        ("config key=value", re.compile(r"\b[a-z][a-z0-9]*_[a-z0-9_]+\s*=\s*[-\w.'\"]+")),
    ],
    "file path": [
        ("run/report folder", re.compile(r"(?<![\w.-])(?:runs|reports)/(?=[\w.…-])")),
        ("scrubbed path", re.compile(r"\[data\]|\[…\]/|(?<![\w/])~/\w")),
        ("absolute path", re.compile(r"(?<![\w.:/~-])/(?:home|root|tmp|work|Users|var|mnt|data|srv|opt|usr|etc)/")),
        ("relative path", re.compile(r"(?<![\w.:/-])\.\./\w")),
        (
            "path to a file",
            re.compile(
                r"(?<![\w/:.-])[\w.-]+(?:/[\w.…-]+)+\.(?:csv|json|pt|pth|ckpt|ipynb|ya?ml|parquet|npz|npy|log)\b"
            ),
        ),
    ],
    "missing value": [("NaN/NA", re.compile(r"(?<![\w-])(?:NaN|nan|NAN|NaT|<NA>)(?![\w-])"))],
    "0.0000": [("0.0000", re.compile(r"(?<![\d.])[-−]?0\.0{4,}(?![\d])"))],
    "long decimals": [("more than 4 decimals", re.compile(r"(?<![\w./])\d+\.\d{5,}(?![\d/])"))],
    "float count": [
        (
            "count with a decimal",
            re.compile(r"(?<![\w.])\d+\.0+ (?:images?|glomeruli|slides?|patches|patients?|errors?|folds?|epochs?)\b"),
        )
    ],
    "developer output": [
        ("Written:", re.compile(r"\bWritten:")),
        ("output folder:", re.compile(r"\boutput folder:", re.I)),
        ("papermill command", re.compile(r"\bpapermill\s+(?:-|\S+\.ipynb)")),
        ("config diff", re.compile(r"\b\w+Config: \d+ setting")),
        ("Python warning", re.compile(r"\b[A-Z]\w*(?:Warning|Error): ")),
        ("traceback", re.compile(r"Traceback \(most recent call last\)")),
        ("progress bar", re.compile(r"\d+%\|")),
    ],
    "alt text": [("default alt text", re.compile(re.escape(DEFAULT_ALT)))],
    "code name": [("identifier", re.compile(r"(?<![\w./\[-])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w/(-]|\.\w|\s*=)"))],
}

_COUNT_HEADER = re.compile(
    r"^(?:n|#|no\.|count|counts|number(?: of)?|tp|fp|tn|fn|true positives|false positives|true negatives|"
    r"false negatives|errors?|images|glomeruli|patches|slides|patients|biopsies|total|folds|seeds|epochs)\b"
    r"|\b(?:n|count|counts|images|glomeruli|patches|slides|patients|biopsies|errors|folds|seeds|epochs)\s*"
    r"(?:\([^)]*\))?$"
)
_NOT_COUNT = re.compile(
    r"mean|median|average|avg|\bper\b|share|%|ratio|rate|\bstd\b|\bsd\b|fraction|proportion|=|size|px|µm|"
    r"score|probabilit|auc|\bmb\b|\bkb\b|second|time|minute"
)
_DECIMAL = re.compile(r"^[-−]?[\d,]*\d\.\d+$")
_CODE_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+$|^(?:auc|ece|mcc|f1|brier|acc|init|lr)$")
# an inline code span in reader text that names a file, a folder or an identifier
_CODE_SPAN = re.compile(
    r"^[\w.-]*\w\.(?:csv|json|png|jpe?g|pt|pth|ckpt|ipynb|ya?ml|parquet|npz|npy|log|txt|html|py)$"
    r"|^[\w.-]+/$|^[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+$|/"
)
_SKIP = {"script", "style", "head", "template", "noscript", "title"}
_VOID = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr"}
_BLOCK = {
    *("p", "div", "br", "li", "tr", "td", "th", "pre", "table", "caption", "figcaption", "figure", "section", "ul"),
    *("ol", "dt", "dd", "summary", "details", "blockquote", "hr", "nav", "footer", "header", "h1", "h2", "h3", "h4"),
    *("h5", "h6", "img"),
}


@dataclass(frozen=True)
class Finding:
    page: str
    check: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.page}: {self.check}: {self.snippet}"


class _Reader(HTMLParser):
    """Visible text, tables (header rows and body cells) and images of one HTML page, in reading order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, hidden)
        self.tables: list[dict] = []
        self.open_tables: list[dict] = []
        self.cell: dict | None = None
        self.images: list[dict] = []
        self.heading = ""
        self._h: list[str] | None = None
        self.in_head = False
        self.code_spans: list[dict] = []  # inline <code> outside <pre>
        self._code: dict | None = None
        self.pos = 0  # characters of visible text so far

    @property
    def hidden(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]

    def _add(self, text: str) -> None:
        self.parts.append(text)
        self.pos += len(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        hide = (
            self.hidden or tag in _SKIP or "hidden" in a or bool(re.search(r"display\s*:\s*none", a.get("style") or ""))
        )
        if tag not in _VOID:
            self.stack.append((tag, hide))
        if hide:
            return
        if tag in _BLOCK:
            self._add("\n")
        if tag == "img":
            self.images.append({**a, "_heading": self.heading, "_at": self.pos})
        elif tag in ("h1", "h2", "h3", "h4"):
            self._h = []
        elif tag == "table":
            t = {"rows": [], "heading": self.heading, "classes": a.get("class") or "", "_at": self.pos}
            self.tables.append(t)
            self.open_tables.append(t)
        elif tag == "thead":
            self.in_head = True
        elif tag == "code" and not any(t == "pre" for t, _ in self.stack):
            self._code = {"text": "", "_heading": self.heading}
            self.code_spans.append(self._code)
        elif tag == "tr" and self.open_tables:
            self.open_tables[-1]["rows"].append({"head": self.in_head, "cells": []})
        elif tag in ("td", "th") and self.open_tables and self.open_tables[-1]["rows"]:
            self.cell = {"tag": tag, "text": "", "classes": a.get("class") or ""}
            self.open_tables[-1]["rows"][-1]["cells"].append(self.cell)

    def handle_endtag(self, tag):
        if tag in _VOID or not any(t == tag for t, _ in self.stack):
            return
        while self.stack:
            t, hide = self.stack.pop()
            if t == tag:
                break
        if hide:
            return
        if tag in _BLOCK:
            self._add("\n")
        if tag in ("h1", "h2", "h3", "h4") and self._h is not None:
            self.heading, self._h = " ".join("".join(self._h).split())[:80], None
        elif tag == "table" and self.open_tables:
            self.open_tables.pop()
        elif tag == "thead":
            self.in_head = False
        elif tag in ("td", "th"):
            self.cell = None
        elif tag == "code":
            self._code = None

    def handle_data(self, data):
        if self.hidden:
            return
        self._add(data)
        if self._h is not None:
            self._h.append(data)
        if self.cell is not None:
            self.cell["text"] += data
        if self._code is not None:
            self._code["text"] += data


def read_page(html: str) -> _Reader:
    r = _Reader()
    r.feed(html)
    r.close()
    r.text = "".join(r.parts)
    for t in r.tables:
        for row in t["rows"]:
            for c in row["cells"]:
                c["text"] = " ".join(c["text"].split())
    return r


def visible_text(html: str) -> str:
    """What a reader sees of a page: text outside <script>/<style>/<head>/hidden elements, entities decoded."""
    return read_page(html).text


def _quote(text: str, start: int, end: int, context: int = 40) -> str:
    before, hit, after = text[max(0, start - context) : start], text[start:end], text[end : end + context]
    squash = lambda s: " ".join(s.split())  # noqa: E731
    return f"«{'…' if start > context else ''}{squash(before)} [{squash(hit)}] {squash(after)}…»"


def _table_label(t: dict) -> str:
    head = [c["text"] for row in _header_rows(t) for c in row][:6]
    where = f' under "{t["heading"]}"' if t["heading"] else ""
    return f"table{where} with header {head}"


def _header_rows(t: dict) -> list[list[dict]]:
    rows = [r["cells"] for r in t["rows"] if r["head"]]
    if not rows:  # no <thead>: leading rows made of <th> only
        for r in t["rows"]:
            if r["cells"] and all(c["tag"] == "th" for c in r["cells"]):
                rows.append(r["cells"])
            else:
                break
    return rows


def _body_rows(t: dict, n_head: int) -> list[list[dict]]:
    return [r["cells"] for r in t["rows"] if not r["head"]][n_head if not any(r["head"] for r in t["rows"]) else 0 :]


def _index_leftovers(t: dict, heads: list, body: list, label: str) -> list[tuple[str, str]]:
    """A pandas DataFrame shown as is: its classes, an empty first header cell, an index-name row, 0..n-1 labels."""
    out = []
    if "dataframe" in t["classes"].split() or any(
        re.search(r"\b(row_heading|index_name|blank)\b", c["classes"]) for r in t["rows"] for c in r["cells"]
    ):
        out.append(("index column", f"a pandas DataFrame shown as is: {label}"))
    if heads and heads[0] and not heads[0][0]["text"] and len(heads[0]) > 1:
        out.append(("index column", f"first header cell is empty (pandas index column?): {label}"))
    for row in heads[1:]:
        if len(row) > 1 and row[0]["text"] and not any(c["text"] for c in row[1:]):
            out.append(("index column", f"index-name header row [{row[0]['text']!r}, '', ...]: {label}"))
    first = [r[0] for r in body if r]
    labels = [c["text"] for c in first]
    if len(first) >= 2 and all(c["tag"] == "th" for c in first) and labels[0] in ("0", "1"):
        if labels == [str(i) for i in range(int(labels[0]), int(labels[0]) + len(first))]:
            out.append(("index column", f"row labels {labels[0]}, {int(labels[0]) + 1}, ... (a pandas index): {label}"))
    return out


def _cell_leftovers(names: list[str], body: list, label: str) -> list[tuple[str, str]]:
    """Code-name headers, decimals in count columns, None/NaN/inf cells, truncated cells."""
    out = [
        ("code-name header", f"header {h!r} is a code name, not words: {label}") for h in names if _CODE_HEADER.match(h)
    ]
    for j, h in enumerate(names):
        if h and _COUNT_HEADER.search(h.lower()) and not _NOT_COUNT.search(h.lower()):
            bad = [r[j]["text"] for r in body if len(r) == len(names) and _DECIMAL.match(r[j]["text"])]
            if bad:
                out.append(("float count", f"count column {h!r} holds {bad[:4]}: {label}"))
    for c in (c for r in body for c in r):
        if c["text"] in ("None", "inf", "-inf", "nan", "NaN", "<NA>"):
            out.append(("missing value", f"cell {c['text']!r}: {label}"))
        elif c["text"].endswith("..."):
            out.append(("truncated cell", f"cell {c['text'][-40:]!r}: {label}"))
    return out


def check_table(t: dict) -> list[tuple[str, str]]:
    """(check, snippet) for the leftovers of one table: pandas index, code-name headers, float counts, NaN cells."""
    label = _table_label(t)
    heads = _header_rows(t)
    body = _body_rows(t, len(heads))
    names = [c["text"] for c in max(heads, key=lambda r: sum(bool(c["text"]) for c in r))] if heads else []
    return _index_leftovers(t, heads, body, label) + _cell_leftovers(names, body, label)


def check_images(r: _Reader) -> list[tuple[str, str]]:
    out = []
    for k, img in enumerate(r.images, 1):
        alt = (img.get("alt") or "").strip()
        under = f' under "{img["_heading"]}"' if img["_heading"] else ""
        where = f"image {k} of {len(r.images)}{under}"
        if not alt:
            out.append(("alt text", f"{where} has no alt text"))
        elif alt == DEFAULT_ALT:
            out.append(("alt text", f'{where} has the default alt text "{DEFAULT_ALT}"'))
    return out


def check_code_spans(r: _Reader) -> list[tuple[str, str]]:
    """Inline code in reader text that names a file, folder or identifier (`flags.csv`, `figures/`, `od_total`)."""
    out = []
    for c in r.code_spans:
        text = " ".join(c["text"].split())
        if _CODE_SPAN.search(text):
            under = f' under "{c["_heading"]}"' if c["_heading"] else ""
            out.append(("code name", f"code span «{text[:60]}»{under}"))
    return out


def check_summary(r: _Reader) -> list[tuple[str, str]]:
    """Every page opens with "What this page shows" / "What to conclude", before any figure or table."""
    at = r.text.find("What this page shows")
    if at < 0 or "What to conclude" not in r.text:
        return [("summary", 'no "What this page shows" / "What to conclude" box')]
    first = min([i["_at"] for i in r.images] + [t["_at"] for t in r.tables if t["rows"]] + [at + 1])
    return [("summary", "a figure or table comes before the summary box")] if first < at else []


def scan_page(name: str, html: str, limit: int = MAX_PER_CHECK) -> list[Finding]:
    """Every leftover of one page, as findings that quote the offending text."""
    r = read_page(html)
    found: list[tuple[str, str]] = []
    headers = {c["text"] for t in r.tables for row in _header_rows(t) for c in row}  # checked as headers
    for check, patterns in TEXT_PATTERNS.items():
        taken: list[tuple[int, int]] = []  # one finding per place and check (the first pattern that matches)
        for what, pat in patterns:
            for m in pat.finditer(r.text):
                if check == "code name" and m.group() in headers:
                    continue
                if not any(a < m.end() and m.start() < b for a, b in taken):
                    taken.append(m.span())
                    found.append((check, f"{what}: {_quote(r.text, m.start(), m.end())}"))
    for t in r.tables:
        found += check_table(t)
    found += check_images(r) + check_code_spans(r) + check_summary(r)
    out, seen = [], {}
    for check, snippet in dict.fromkeys(found):
        seen[check] = seen.get(check, 0) + 1
        if seen[check] <= limit:
            out.append(Finding(name, check, snippet))
    out += [Finding(name, c, f"... and {n - limit} more") for c, n in seen.items() if n > limit]
    return out


def check_sizes(folder: Path, page_mb: float = PAGE_MB, total_mb: float = TOTAL_MB, css_kb: float = CSS_KB):
    out, total = [], 0
    for p in sorted(folder.glob("*.html")):
        size = p.stat().st_size
        total += size
        if size > page_mb * 2**20:
            out.append(Finding(p.name, "page size", f"{size / 2**20:.1f} MB (at most {page_mb:g} MB)"))
        html = p.read_text(encoding="utf-8")
        css = sum(len(m) for m in re.findall(r"<style\b.*?</style>", html, re.S | re.I))
        if css > css_kb * 1024:
            out.append(Finding(p.name, "page size", f"{css / 1024:.0f} KB of style sheets (at most {css_kb:g} KB)"))
    if total > total_mb * 2**20:
        out.append(Finding(folder.name, "page size", f"report {total / 2**20:.1f} MB (at most {total_mb:g} MB)"))
    return out


def scan_report(folder: Path, **limits) -> list[Finding]:
    folder = Path(folder)
    pages = sorted(folder.glob("*.html"))
    assert pages, f"no HTML page in {folder}"
    found = [f for p in pages for f in scan_page(p.name, p.read_text(encoding="utf-8"))]
    return found + check_sizes(folder, **limits)


CHECKS = [*TEXT_PATTERNS, "index column", "code-name header", "truncated cell", "summary", "page size"]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    findings = scan_report(Path(argv[0]))
    page = None
    for f in sorted(findings, key=lambda f: (f.page, CHECKS.index(f.check) if f.check in CHECKS else 99)):
        if f.page != page:
            page = f.page
            print(f"\n== {page}")
        print(f"  {f.check}: {f.snippet}")
    print(f"\n{len(findings)} leftover(s) in {argv[0]}" if findings else f"no leftover in {argv[0]}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
