"""One executed notebook -> one self-contained HTML page without code.

nbconvert's ``basic`` template (the cells only) in a small page of our own (:data:`PAGE_CSS`: readable at 1,024 px,
tables and figures never wider than the page), figures embedded as base64, no external scripts, no JupyterLab CSS.
Cleaned on a copy: no stderr, widgets or remove-tagged cells; large PNG photographs are re-encoded as JPEG."""

from __future__ import annotations

import base64
import copy
import html
import io
import mimetypes
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glomlib.publish.report.scrub import scrub_html_literals

REMOVE_CELL_TAGS = {"remove_cell", "remove-cell", "hide_cell"}
REMOVE_OUTPUT_TAGS = {"remove_output", "remove-output", "hide_output", "hide-output", "dev"}  # dev: JupyterLab only

_TEXT_MIME = re.compile(r"^(text/|image/svg\+xml$|application/(javascript|json)$)")


def _clean_output(out: Any, scrub: Callable[[str], str]) -> Any | None:
    """The output scrubbed, or None for one that is dropped (stderr, widgets)."""
    if out.output_type == "stream":
        if out.get("name") == "stderr":
            return None
        out.text = scrub(out.text)
    elif out.output_type in ("display_data", "execute_result"):
        data = out.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            return None
        for mime in list(data):
            if _TEXT_MIME.match(mime) and isinstance(data[mime], str):
                data[mime] = scrub(data[mime])
        out.metadata = {k: v for k, v in out.get("metadata", {}).items() if k.startswith("image/")}
    elif out.output_type == "error":
        out.evalue = scrub(out.evalue)
        out.traceback = [scrub(t) for t in out.traceback]
    return out


def _clean_cell(cell: Any, tags: set[str], scrub: Callable[[str], str]) -> None:
    cell.metadata.pop("papermill", None)
    cell.metadata.pop("execution", None)
    if cell.cell_type in ("markdown", "raw"):
        cell.source = scrub(cell.source)
        for att in cell.get("attachments", {}).values():
            for mime in list(att):
                if mime.startswith("text/") or mime == "image/svg+xml":
                    att[mime] = scrub(att[mime])
    elif cell.cell_type == "code":
        cell.source = ""  # never rendered; do not ship code paths either
        outs = [] if tags & REMOVE_OUTPUT_TAGS else cell.get("outputs", [])
        cell.outputs = [o for o in (_clean_output(o, scrub) for o in outs) if o is not None]
        cell.execution_count = None


def clean_notebook(nb: Any, scrub: Callable[[str], str]) -> Any:
    """A copy of ``nb`` ready to share: no stderr, widgets, remove-tagged cells; scrubbed text everywhere."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    cells = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if not (tags & REMOVE_CELL_TAGS or "injected-parameters" in tags):
            _clean_cell(cell, tags, scrub)
            cells.append(cell)
    nb.cells = cells
    return nb


def notebook_title(nb: Any, fallback: str) -> str:
    """The first markdown heading of the notebook, else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                m = re.match(r"^\s*#{1,2}\s+(.+?)\s*#*\s*$", line)
                if m:
                    return re.sub(r"[*_`]", "", m.group(1)).strip()
    return fallback


_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.I)
_MODULE_SCRIPT = re.compile(
    r"<script type=\"module\">(?:(?!</script>).)*?https?://(?:(?!</script>).)*</script>", re.S | re.I
)
_IMG_SRC = re.compile(r"(<img\b[^>]*?\bsrc=)([\"'])(?!data:)([^\"']+)\2", re.I)


def _embed_local_images(body: str, bases: list[Path], log: Callable[[str], None]) -> str:
    def repl(m: re.Match) -> str:
        src = m.group(3)
        if src.startswith(("http://", "https://", "//")):
            log(f"    warning: external image {src} left as a link (not embedded)")
            return m.group(0)
        rel = src.removeprefix("file://")
        for base in bases:
            f = (base / rel) if not Path(rel).is_absolute() else Path(rel)
            if f.is_file():
                mime = mimetypes.guess_type(f.name)[0] or "image/png"
                return f"{m.group(1)}{m.group(2)}data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()}{m.group(2)}"
        log(f"    warning: image {src} not found; it will not show")
        return m.group(0)

    return _IMG_SRC.sub(repl, body)


PAGE_CSS = """
body{font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1d;margin:0;background:#fff}
main,.glomlib-foot{max-width:62rem;margin:0 auto;padding:0 1rem} h1{font-size:1.7em;line-height:1.25}
h2{font-size:1.35em;margin-top:1.6em;border-bottom:1px solid #ddd} h3{font-size:1.1em} a{color:#0b5394}
img,svg{max-width:100%;height:auto}
table{border-collapse:collapse;border:0;display:block;overflow-x:auto;max-width:100%;width:max-content}
th,td{padding:.3em .7em;border:0;border-bottom:1px solid #ddd;text-align:left;vertical-align:top} th{background:#f3f5f7}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;padding:.6em;font-size:.85em}
.output_subarea{max-width:100%;margin:.3em 0} .output_stderr{display:none}
.glomlib-nav{font-size:.9em;padding:.5em 1rem;background:#f3f5f7;border-bottom:1px solid #ddd}
.glomlib-nav a{text-decoration:none}
.glomlib-foot{font-size:.8em;color:#444;margin:2em auto;padding-top:.8em;border-top:1px solid #ddd}
.glomlib-foot pre{white-space:pre-wrap;font:inherit;margin:.3em 0;background:none;padding:0}
"""
_PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]{200000,})")


def _jpeg_if_photo(m: re.Match) -> str:
    """A large embedded PNG with many colours (a photograph) as JPEG q85; diagrams and small images stay PNG."""
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB")
    colours = img.getcolors(maxcolors=img.width * img.height) or []
    if len(colours) < 4096 or max(c for c, _ in colours) > 0.5 * img.width * img.height:  # a diagram on white
        return m.group(0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    jpeg = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/jpeg;base64,{jpeg}" if len(jpeg) < len(m.group(1)) else m.group(0)


def render_notebook(
    nb_path: Path,
    out_html: Path,
    *,
    title: str,
    scrub: Callable[[str], str],
    footer_html: str,
    bases: list[Path],
    log: Callable[[str], None] = print,
) -> Path:
    """Render one executed notebook to a single self-contained HTML file without code."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = clean_notebook(nbformat.read(str(nb_path), as_version=4), scrub)
    exporter = HTMLExporter(
        template_name="basic",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
        exclude_anchor_links=True,
    )
    resources = {"metadata": {"name": title, "path": str(bases[0])}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    body = _MODULE_SCRIPT.sub("", _EXTERNAL_SCRIPT.sub("", body))
    body = _PNG_URI.sub(_jpeg_if_photo, _embed_local_images(body, bases, log))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body>"
        f'<div class="glomlib-nav"><a href="index.html">&larr; Report index</a> &middot; '
        f"<strong>{html.escape(title)}</strong></div><main>{body}</main>{footer_html}</body></html>\n"
    )
    out_html.write_text(scrub_html_literals(page, scrub), encoding="utf-8")
    return out_html
