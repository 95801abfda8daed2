"""Render a pipeline run's executed notebooks into shareable, code-free HTML reports.

``reports/<run>/index.html`` links one self-contained page per notebook (figures embedded as base64, no
external scripts), and shows the run's profile, parameters, software versions, data fingerprint, git commit
and the dataset's license and citation. Like InnerEye's reports, pages come from nbconvert's
``HTMLExporter`` with ``exclude_input=True`` (no code, no prompts).

Before rendering, every page is cleaned (on a copy; the executed notebooks stay untouched):

* stderr streams (warnings, progress bars) and Jupyter widget outputs are dropped;
* absolute paths are made relative (project root -> ``.``, the data folder -> ``[data]``, ``$HOME`` -> ``~``,
  any other absolute path -> ``[…]/<file name>``) and the user and host names are removed;
* with ``pseudonymise=True`` every slide and patient identifier of the run's manifest is replaced by a
  stable pseudonym (keyed HMAC, e.g. ``slide-7f3a2c``) in markdown, text, tables, HTML and SVG outputs.
  Raster figures (PNG) cannot be rewritten: a figure whose pixels show a slide identifier keeps it; the
  index page says so. The key lives in ``$GLOMLIB_PSEUDONYM_KEY`` or ``data/.pseudonym-key`` (created on
  first use, never written into a report), so the same slide gets the same pseudonym in every report.
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import getpass
import html
import json
import mimetypes
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterable

from glomlib.publish.privacy import pseudonym, pseudonym_key
from glomlib.publish.steps import find_project_root, plan_steps, refuse_real_identifiers

# ------------------------------------------------------------------------------------ dataset license
GLOMERULI_PAS_LICENSE = ("CC BY-NC-SA 4.0 (Attribution-NonCommercial-ShareAlike 4.0 International), "
                         "https://creativecommons.org/licenses/by-nc-sa/4.0/")
GLOMERULI_PAS_CITATION = (
    "Bueno G. et al. (2020), \"Data for glomeruli characterization in histopathological images\", "
    "Data in Brief 29:105314, doi:10.17632/k7nvtgn2x6.3 (underlying slides, CC BY 4.0).\n"
    "Weishaupt H. et al. (2025), \"Unsupervised learning for labeling global glomerulosclerosis\", "
    "Computers in Biology and Medicine 196:110719, doi:10.1016/j.compbiomed.2025.110719 (patch crops and masks)."
)
STEP_TITLES = {
    "01_data_audit": "Data audit",
    "02_simclr_pretrain": "Self-supervised pretraining (SimCLR)",
    "03_finetune": "Fine-tuning",
    "04_baseline_comparison": "Comparison of initialisations",
    "05_error_analysis": "Error analysis",
}
HEADLINE_METRICS = ("auc", "accuracy", "f1_weighted", "balanced_accuracy", "sensitivity", "specificity")
REMOVE_CELL_TAGS = {"remove_cell", "remove-cell", "hide_cell"}
REMOVE_OUTPUT_TAGS = {"remove_output", "remove-output", "hide_output", "hide-output"}


def dataset_license(manifest: Path | None) -> dict[str, str]:
    """License and citation for the data: LICENSE / CITATION files next to the manifest (written by
    ``glomlib data fetch``), else the known glomeruli-pas text when the data is glomeruli-pas."""
    lic = cit = ""
    folder = manifest.parent if manifest else None
    if folder and folder.is_dir():
        for name in ("CITATION", "CITATION.md", "CITATION.txt", "CITATION.cff"):
            if (folder / name).is_file():
                cit = (folder / name).read_text(errors="replace").strip()
                break
        if (folder / "LICENSE").is_file():
            lines = [ln.strip() for ln in (folder / "LICENSE").read_text(errors="replace").splitlines() if ln.strip()]
            lic = " ".join(lines[:2]) if len(lines) > 1 and lines[1].startswith("http") else (lines[0] if lines else "")
    text = " ".join(str(p) for p in [manifest] if p) + " " + (
        (folder / "README.md").read_text(errors="replace")[:4000] if folder and (folder / "README.md").is_file()
        else "")
    is_gpas = "glomeruli-pas" in text.lower() or "GlobalGlomerulosclerosis" in text
    if is_gpas:
        if not lic or lic.startswith("Attribution-NonCommercial-ShareAlike"):
            lic = GLOMERULI_PAS_LICENSE
        cit = cit or GLOMERULI_PAS_CITATION
    return {"license": lic or "unknown: put a LICENSE file next to the manifest",
            "citation": cit or "unknown: put a CITATION file next to the manifest"}


# ------------------------------------------------------------------------------------ scrubbing
_GENERIC_ABS = re.compile(
    r"(?<![\w.:/~\]\[-])(?:/(?:home|root|Users|tmp|var|work|mnt|data|srv|opt|scratch|media|private|gpfs|nfs|"
    r"lustre|cluster|usr|etc|run)(?:/[\w.@+-]+)+|[A-Za-z]:\\(?:[\w .@+-]+\\)*[\w.@+-]+)"
)


_DATA_URI = re.compile(r"(data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+)")


_PSEUDONYM = re.compile(r"^(slide|patient)-[0-9a-f]{6}$")


class Scrubber:
    """Replaces absolute paths, user and host names (and optionally slide identifiers) in text."""

    def __init__(self, project_root: Path, data_dirs: Iterable[Path] = (), slides: Iterable[str] = (),
                 patients: Iterable[str] = (), key: bytes | None = None):
        home = Path.home()
        pairs: list[tuple[str, str]] = []
        for d in data_dirs:
            d = Path(d).resolve()
            if not str(d).startswith(str(project_root.resolve()) + os.sep):
                pairs.append((str(d), "[data]"))
        root = str(project_root.resolve())
        pairs += [(root, "."), (str(project_root.resolve().parent), "..")]
        if str(home) not in ("/", ""):
            pairs.append((str(home), "~"))
        # longest first, so a folder inside another is replaced by its own token
        self.pairs = sorted({(a, b) for a, b in pairs if a and a != "/"}, key=lambda ab: -len(ab[0]))
        # a prefix matches only as a whole path component: /work/main/x yes, /work/main2 no
        self._patterns: list[tuple[re.Pattern, str]] = []
        for a, b in self.pairs:
            self._patterns.append((re.compile(re.escape(a) + "/"), "" if b == "." else b + "/"))
            self._patterns.append((re.compile(re.escape(a) + r"(?![\w.@+-])"), b))
        self.user = getpass.getuser()
        self.host = socket.gethostname()
        self.pseudonyms: dict[str, str] = {}
        if key is not None:
            slides = [s for s in slides if not _PSEUDONYM.match(str(s))]
            patients = [p for p in patients if not _PSEUDONYM.match(str(p))]
            for s in slides:
                self.pseudonyms[str(s)] = pseudonym(str(s), key, "slide")
            for p in patients:
                self.pseudonyms.setdefault(str(p), pseudonym(str(p), key, "patient"))
        ids = sorted((s for s in self.pseudonyms if s), key=len, reverse=True)
        self._ids = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, ids)) + r")(?![A-Za-z0-9])") \
            if ids else None

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if "base64," in text:  # never touch embedded images (base64 may contain '/tmp/...'-like runs)
            parts = _DATA_URI.split(text)
            return "".join(p if i % 2 else self._scrub(p) for i, p in enumerate(parts))
        return self._scrub(text)

    def replace_paths(self, text: str) -> str:
        for pattern, token in self._patterns:
            text = pattern.sub(lambda _m, t=token: t, text)
        return text

    def _scrub(self, text: str) -> str:
        text = self.replace_paths(text)
        text = _GENERIC_ABS.sub(lambda m: "[…]/" + re.split(r"[\\/]", m.group(0))[-1], text)
        for name in {self.user, self.host} - {""}:
            # in paths/addresses always; as a bare word only when it is not a common word
            text = re.sub(rf"(?<=[/@\\]){re.escape(name)}(?![\w-])|(?<![\w-]){re.escape(name)}(?=@)", "[…]", text)
            if name not in {"root", "user", "admin", "jovyan", "runner", "ubuntu", "vm", "localhost"}:
                text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "[…]", text)
        if self._ids is not None:
            text = self._ids.sub(lambda m: self.pseudonyms[m.group(1)], text)
        return text


def manifest_info(manifest: Path) -> dict[str, Any]:
    """Slide and patient identifiers and the images' common folder, read from the raw manifest CSV
    (no decoding or hashing; a missing slide column falls back to the file names' ``<slide>-<n>`` stem)."""
    import pandas as pd

    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception:
        return {"slides": [], "patients": [], "image_root": None}
    paths = [os.path.normpath(p if os.path.isabs(p) else os.path.join(manifest.parent, p))
             for p in df.get("path", []) if p]
    if "slide" in df:
        slides = set(df["slide"])
    else:
        slides = {Path(p).stem.rsplit("-", 1)[0] for p in paths}
    patients = set(df["patient"]) if "patient" in df else set()
    try:
        image_root = Path(os.path.commonpath(paths)) if paths else None
    except ValueError:
        image_root = None
    return {"slides": sorted(s for s in slides if s), "patients": sorted(p for p in patients if p),
            "image_root": image_root}


# ------------------------------------------------------------------------------------ notebook -> HTML
_TEXT_MIME = re.compile(r"^(text/|image/svg\+xml$|application/(javascript|json)$)")


def clean_notebook(nb: Any, scrub: Callable[[str], str]) -> Any:
    """A copy of ``nb`` ready to share: no stderr, widgets, remove-tagged cells; scrubbed text everywhere."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    cells = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & REMOVE_CELL_TAGS or "injected-parameters" in tags:
            continue
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
            if tags & REMOVE_OUTPUT_TAGS:
                cell.outputs = []
            outs = []
            for out in cell.get("outputs", []):
                if out.output_type == "stream":
                    if out.get("name") == "stderr":
                        continue
                    out.text = scrub(out.text)
                elif out.output_type in ("display_data", "execute_result"):
                    data = out.get("data", {})
                    if "application/vnd.jupyter.widget-view+json" in data:
                        continue
                    for mime in list(data):
                        if _TEXT_MIME.match(mime) and isinstance(data[mime], str):
                            data[mime] = scrub(data[mime])
                    out.metadata = {k: v for k, v in out.get("metadata", {}).items() if k.startswith("image/")}
                elif out.output_type == "error":
                    out.evalue = scrub(out.evalue)
                    out.traceback = [scrub(t) for t in out.traceback]
                outs.append(out)
            cell.outputs = outs
            cell.execution_count = None
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
_MODULE_SCRIPT = re.compile(r"<script type=\"module\">(?:(?!</script>).)*?https?://(?:(?!</script>).)*</script>",
                            re.S | re.I)
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
<style>
.glomlib-nav{font:14px/1.4 system-ui,sans-serif;padding:8px 16px;background:#f3f5f7;border-bottom:1px solid #dde}
.glomlib-nav a{color:#1a4f8b;text-decoration:none}
.glomlib-foot{font:13px/1.5 system-ui,sans-serif;color:#444;margin:32px 16px;padding-top:12px;border-top:1px solid #dde}
.glomlib-foot pre{white-space:pre-wrap;font:inherit;margin:4px 0}
</style>
"""


def render_notebook(nb_path: Path, out_html: Path, *, title: str, scrub: Callable[[str], str],
                    footer_html: str, bases: list[Path], log: Callable[[str], None] = print) -> Path:
    """Render one executed notebook to a single self-contained HTML file without code."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = clean_notebook(nbformat.read(str(nb_path), as_version=4), scrub)
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True, exclude_anchor_links=True)
    resources = {"metadata": {"name": title, "path": str(bases[0])}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    body = _EXTERNAL_SCRIPT.sub("", body)
    body = _MODULE_SCRIPT.sub("", body)
    body = _embed_local_images(body, bases, log)
    nav = (f'<div class="glomlib-nav"><a href="index.html">&larr; Report index</a> &middot; '
           f"<strong>{html.escape(title)}</strong></div>")
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + PAGE_CSS + nav, body, count=1)
    body = body.replace("</body>", footer_html + "</body>", 1)
    body = scrub_html_literals(body, scrub)
    out_html.write_text(body, encoding="utf-8")
    return out_html


def scrub_html_literals(body: str, scrub: Any) -> str:
    """Last line of defence on the finished page: the known path prefixes, outside embedded images."""
    if not hasattr(scrub, "replace_paths"):
        return body
    parts = _DATA_URI.split(body)
    return "".join(p if i % 2 else scrub.replace_paths(p) for i, p in enumerate(parts))


# ------------------------------------------------------------------------------------ index page
def _table(rows: Iterable[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _fmt_metric(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v:
        std = v.get("std")
        return f"{v['mean']:.3f} &plusmn; {std:.3f}" if isinstance(std, (int, float)) else f"{v['mean']:.3f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


INDEX_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:1.6em;margin-bottom:0} .sub{color:#555;margin-top:4px}
table{border-collapse:collapse;margin:8px 0 16px} th,td{border:1px solid #dde;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f5f7;font-weight:600} pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:13px;white-space:pre-wrap}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px} a{color:#1a4f8b}
ol.pages li{margin:4px 0}
"""


def render_index(out_dir: Path, *, run_name: str, pages: list[dict[str, str]], definition: dict[str, Any],
                 provenance: dict[str, Any], summary: dict[str, Any], license_info: dict[str, str],
                 pseudonymised: bool, scrub: Callable[[str], str]) -> Path:
    import yaml

    prof = definition.get("profile", {})
    metrics = summary.get("metrics", {})
    found = {m for v in metrics.values() if isinstance(v, dict) for m in v}
    names = [m for m in HEADLINE_METRICS if m in found] + sorted(found - set(HEADLINE_METRICS))
    metric_html = ""
    if metrics:
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        rows = "".join(
            f"<tr><td>{html.escape(init)}</td>" + "".join(f"<td>{_fmt_metric(v.get(n, ''))}</td>" for n in names)
            + "</tr>" for init, v in metrics.items() if isinstance(v, dict))
        metric_html = (f"<h2>Headline results</h2><p>Mean &plusmn; std over the cross-validation folds, per "
                       f"initialisation of the encoder.</p><table><tr><th>init</th>{head}</tr>{rows}</table>")
    page_list = "".join(
        f'<li><a href="{html.escape(p["file"])}">{html.escape(p["title"])}</a></li>' if p.get("file")
        else f'<li>{html.escape(p["title"])} &mdash; not run ({html.escape(str(p.get("status")))})</li>'
        for p in pages)
    versions = provenance.get("versions", {}) or {}
    prov_rows = [
        ("profile", html.escape(f"{prof.get('name', '?')} ({prof.get('source', '')})")),
        ("description", html.escape(str(prof.get("description", "")))),
        ("data", html.escape(scrub(str(definition.get("data", ""))))),
        ("data fingerprint", f"<code>{html.escape(str(definition.get('data_fingerprint')))}</code>"),
        ("git commit", f"<code>{html.escape(str(provenance.get('git_commit')))}</code>"),
        ("created (UTC)", html.escape(str(definition.get("created_utc", "")))),
        ("rendered (UTC)", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")),
    ]
    ver_rows = [(k, html.escape(scrub(str(v)))) for k, v in versions.items() if k != "platform"]
    profile_yaml = yaml.safe_dump({k: v for k, v in prof.items() if k != "source"}, sort_keys=False)
    params_json = json.dumps(definition.get("parameters", {}), indent=1)
    if definition.get("pseudonymised_data"):
        pseudo_note = ('<p class="note">Slide and patient identifiers are stable pseudonyms (e.g. '
                       "<code>slide-7f3a2c</code>): the notebooks ran on a pseudonymised manifest, so tables and "
                       "figures show pseudonyms. Images titled with their file names still show the original "
                       "file name: check the galleries before sharing outside the lab.</p>")
    elif pseudonymised:
        pseudo_note = ('<p class="note">Slide and patient identifiers are replaced by stable pseudonyms (e.g. '
                       "<code>slide-7f3a2c</code>) in all text, tables and vector figures. Raster figures (PNG) "
                       "are embedded unchanged: check that none shows an identifier before sharing outside the "
                       "lab (or make a new run with <code>glomlib run --pseudonymise</code>).</p>")
    else:
        pseudo_note = ""
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>glomlib report: {html.escape(run_name)}</title>
<style>{INDEX_CSS}</style></head><body>
<h1>glomlib report</h1>
<p class="sub">Run <code>{html.escape(run_name)}</code> &middot; profile <strong>{html.escape(str(prof.get('name', '?')))}</strong></p>
{pseudo_note}
<h2>Pages</h2>
<ol class="pages">{page_list}</ol>
{metric_html}
<h2>Dataset license and citation</h2>
<p><strong>License:</strong> {html.escape(license_info['license'])}</p>
<p><strong>Cite:</strong></p><pre>{html.escape(license_info['citation'])}</pre>
<h2>Run</h2>
{_table(prov_rows)}
<h2>Configuration</h2>
<p>The profile this run used:</p><pre>{html.escape(scrub(profile_yaml))}</pre>
<details><summary>Parameters given to every notebook</summary><pre>{html.escape(scrub(params_json))}</pre></details>
<h2>Software versions</h2>
{_table(ver_rows)}
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(scrub_html_literals(doc, scrub), encoding="utf-8")
    return path


def footer(license_info: dict[str, str], run_name: str, profile: str, fingerprint: str | None,
           commit: str | None) -> str:
    return (f'<div class="glomlib-foot"><strong>Run</strong> {html.escape(run_name)} &middot; profile '
            f"{html.escape(profile)} &middot; data fingerprint <code>{html.escape(str(fingerprint))[:24]}</code> "
            f"&middot; git <code>{html.escape(str(commit))[:12]}</code> &middot; "
            f'<a href="index.html">configuration and software versions</a><br>'
            f"<strong>Data license:</strong> {html.escape(license_info['license'])}"
            f"<pre><strong>Cite:</strong> {html.escape(license_info['citation'])}</pre></div>")


def render_run(run_dir: str | Path, *, reports_root: str | Path = "reports", pseudonymise: bool = False,
               project_root: str | Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Render every executed notebook of a pipeline run into ``reports_root/<run>[-pseudonymised]/``;
    returns the index page. An earlier rendering of the same run is replaced as a whole."""

    log = log or (lambda m: print(m, flush=True))
    root = Path(project_root).resolve() if project_root else find_project_root()
    run_dir = Path(run_dir).resolve()
    definition = json.loads((run_dir / "pipeline.json").read_text())
    if pseudonymise:
        refuse_real_identifiers(run_dir.name, definition)
    state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").is_file() else {"steps": {}}
    prov_path = run_dir / "provenance.json"
    provenance = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}

    data = Path(definition["data"])
    data = data if data.is_absolute() else root / data
    source = Path(definition.get("data_source", definition["data"]))
    source = source if source.is_absolute() else root / source
    info, src_info = manifest_info(data), manifest_info(source)
    data_dirs = [d for d in (source.parent, data.parent, info["image_root"], src_info["image_root"]) if d]
    if pseudonymise:
        slides = sorted(set(info["slides"]) | set(src_info["slides"]))
        patients = sorted(set(info["patients"]) | set(src_info["patients"]))
        scrub = Scrubber(root, data_dirs, slides, patients, key=pseudonym_key(root))
    else:
        scrub = Scrubber(root, data_dirs)
    license_info = dataset_license(source)

    name = run_dir.name + ("-pseudonymised" if pseudonymise else "")
    reports_root = Path(reports_root)
    reports_root = reports_root if reports_root.is_absolute() else root / reports_root
    tmp = reports_root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    foot = footer(license_info, run_dir.name, str(definition.get("profile", {}).get("name")),
                  definition.get("data_fingerprint"), provenance.get("git_commit"))
    pages = []
    titles = STEP_TITLES
    for step in plan_steps(definition["profile"]):
        st = state["steps"].get(step.id, {}).get("status", "pending")
        nb_path = run_dir / "notebooks" / step.executed_name
        if st != "completed" or not nb_path.is_file():
            pages.append({"file": "", "title": f"{titles.get(step.stem, step.stem)}"
                          f"{f' ({step.init})' if step.init else ''}", "status": st})
            continue
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
        title = notebook_title(nb, titles.get(step.stem, step.stem))
        if step.init and not re.search(rf"(?<![\w-]){re.escape(step.init)}(?![\w-])", title):
            title = f"{title}: init {step.init}"
        out_html = tmp / (Path(step.executed_name).stem + ".html")
        log(f"  rendering {step.executed_name} -> {out_html.name}")
        render_notebook(nb_path, out_html, title=scrub(title), scrub=scrub, footer_html=foot,
                        bases=[root, run_dir, run_dir / step.out], log=log)
        pages.append({"file": out_html.name, "title": scrub(title), "status": st})
    render_index(tmp, run_name=run_dir.name, pages=pages, definition=definition, provenance=provenance,
                 summary=summary, license_info=license_info, pseudonymised=pseudonymise, scrub=scrub)
    final = reports_root / name
    if final.exists():
        old = reports_root / f".{name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final / "index.html"
