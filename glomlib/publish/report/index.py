"""The report's index page: pages, headline results, dataset license and citation, configuration, versions."""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from glomlib.publish.report.scrub import scrub_html_literals

GLOMERULI_PAS_LICENSE = (
    "CC BY-NC-SA 4.0 (Attribution-NonCommercial-ShareAlike 4.0 International), "
    "https://creativecommons.org/licenses/by-nc-sa/4.0/"
)
GLOMERULI_PAS_CITATION = (
    'Bueno G. et al. (2020), "Data for glomeruli characterization in histopathological images", '
    "Data in Brief 29:105314, doi:10.17632/k7nvtgn2x6.3 (underlying slides, CC BY 4.0).\n"
    'Weishaupt H. et al. (2025), "Unsupervised learning for labeling global glomerulosclerosis", '
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
    text = (
        " ".join(str(p) for p in [manifest] if p)
        + " "
        + (
            (folder / "README.md").read_text(errors="replace")[:4000]
            if folder and (folder / "README.md").is_file()
            else ""
        )
    )
    is_gpas = "glomeruli-pas" in text.lower() or "GlobalGlomerulosclerosis" in text
    if is_gpas:
        if not lic or lic.startswith("Attribution-NonCommercial-ShareAlike"):
            lic = GLOMERULI_PAS_LICENSE
        cit = cit or GLOMERULI_PAS_CITATION
    return {
        "license": lic or "unknown: put a LICENSE file next to the manifest",
        "citation": cit or "unknown: put a CITATION file next to the manifest",
    }


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


def _metric_table(metrics: dict[str, Any]) -> str:
    if not metrics:
        return ""
    found = {m for v in metrics.values() if isinstance(v, dict) for m in v}
    names = [m for m in HEADLINE_METRICS if m in found] + sorted(found - set(HEADLINE_METRICS))
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{html.escape(init)}</td>" + "".join(f"<td>{_fmt_metric(v.get(n, ''))}</td>" for n in names) + "</tr>"
        for init, v in metrics.items()
        if isinstance(v, dict)
    )
    return (
        f"<h2>Headline results</h2><p>Mean &plusmn; std over the cross-validation folds, per "
        f"initialisation of the encoder.</p><table><tr><th>init</th>{head}</tr>{rows}</table>"
    )


def _page_list(pages: list[dict[str, str]]) -> str:
    return "".join(
        f'<li><a href="{html.escape(p["file"])}">{html.escape(p["title"])}</a></li>'
        if p.get("file")
        else f"<li>{html.escape(p['title'])} &mdash; not run ({html.escape(str(p.get('status')))})</li>"
        for p in pages
    )


def _run_rows(definition: dict[str, Any], provenance: dict[str, Any], scrub: Callable[[str], str]) -> list:
    prof = definition.get("profile", {})
    return [
        ("profile", html.escape(f"{prof.get('name', '?')} ({prof.get('source', '')})")),
        ("description", html.escape(str(prof.get("description", "")))),
        ("data", html.escape(scrub(str(definition.get("data", ""))))),
        ("data fingerprint", f"<code>{html.escape(str(definition.get('data_fingerprint')))}</code>"),
        ("git commit", f"<code>{html.escape(str(provenance.get('git_commit')))}</code>"),
        ("created (UTC)", html.escape(str(definition.get("created_utc", "")))),
        ("rendered (UTC)", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")),
    ]


def _status_note(summary: dict[str, Any]) -> str:
    """In words, at the top: which steps failed or did not run, so an incomplete run is never read as final."""
    status = summary.get("status", {}) or {}
    failed = summary.get("failed", {}) or {sid: "" for sid, s in status.items() if s == "failed"}
    if not failed:
        return ""
    items = "".join(
        f"<li><strong>{html.escape(s)}</strong> failed: {html.escape(str(e or ''))}</li>" for s, e in failed.items()
    )
    open_ = [s for s, st in status.items() if st not in ("completed", "failed")]
    rest = f" Steps not run: {html.escape(', '.join(open_))}." if open_ else ""
    return (
        '<p class="note"><strong>This run is incomplete: a step failed</strong>, so the pages and numbers below '
        f"are not the run's final results.{rest} Fix the cause, then continue with "
        "<code>glomlib run --resume RUN</code>.</p>"
        f"<ul>{items}</ul>"
    )


def _pseudonym_note(pseudonymised_data: bool, pseudonymised: bool) -> str:
    if pseudonymised_data:
        return (
            '<p class="note">Slide and patient identifiers are stable pseudonyms (e.g. '
            "<code>slide-7f3a2c</code>): the notebooks ran on a pseudonymised manifest, so tables and "
            "figures show pseudonyms. Images titled with their file names still show the original "
            "file name: check the galleries before sharing outside the lab.</p>"
        )
    if pseudonymised:
        return (
            '<p class="note">Slide and patient identifiers are replaced by stable pseudonyms (e.g. '
            "<code>slide-7f3a2c</code>) in all text, tables and vector figures. Raster figures (PNG) "
            "are embedded unchanged: check that none shows an identifier before sharing outside the "
            "lab (or make a new run with <code>glomlib run --pseudonymise</code>).</p>"
        )
    return ""


def render_index(
    out_dir: Path,
    *,
    run_name: str,
    pages: list[dict[str, str]],
    definition: dict[str, Any],
    provenance: dict[str, Any],
    summary: dict[str, Any],
    license_info: dict[str, str],
    pseudonymised: bool,
    scrub: Callable[[str], str],
) -> Path:
    import yaml

    prof = definition.get("profile", {})
    versions = provenance.get("versions", {}) or {}
    ver_rows = [(k, html.escape(scrub(str(v)))) for k, v in versions.items() if k != "platform"]
    profile_yaml = yaml.safe_dump({k: v for k, v in prof.items() if k != "source"}, sort_keys=False)
    params_json = json.dumps(definition.get("parameters", {}), indent=1)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>glomlib report: {html.escape(run_name)}</title>
<style>{INDEX_CSS}</style></head><body>
<h1>glomlib report</h1>
<p class="sub">Run <code>{html.escape(run_name)}</code> &middot; profile <strong>{html.escape(str(prof.get("name", "?")))}</strong></p>
{_status_note(summary)}
{_pseudonym_note(bool(definition.get("pseudonymised_data")), pseudonymised)}
<h2>Pages</h2>
<ol class="pages">{_page_list(pages)}</ol>
{_metric_table(summary.get("metrics", {}))}
<h2>Dataset license and citation</h2>
<p><strong>License:</strong> {html.escape(license_info["license"])}</p>
<p><strong>Cite:</strong></p><pre>{html.escape(license_info["citation"])}</pre>
<h2>Run</h2>
{_table(_run_rows(definition, provenance, scrub))}
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


def footer(
    license_info: dict[str, str], run_name: str, profile: str, fingerprint: str | None, commit: str | None
) -> str:
    return (
        f'<div class="glomlib-foot"><strong>Run</strong> {html.escape(run_name)} &middot; profile '
        f"{html.escape(profile)} &middot; data fingerprint <code>{html.escape(str(fingerprint))[:24]}</code> "
        f"&middot; git <code>{html.escape(str(commit))[:12]}</code> &middot; "
        f'<a href="index.html">configuration and software versions</a><br>'
        f"<strong>Data license:</strong> {html.escape(license_info['license'])}"
        f"<pre><strong>Cite:</strong> {html.escape(license_info['citation'])}</pre></div>"
    )
