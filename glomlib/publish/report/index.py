"""The report's index page: the answer with its CIs first, the pages, dataset license and citation, reproducibility."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from glomlib.publish import present as P
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


STEP_QUESTIONS = {
    "01_data_audit": "What is in the data: glomeruli per class, slide and centre, image quality, duplicates, confounders?",
    "02_simclr_pretrain": "Did self-supervised pretraining on the glomeruli learn features that separate the classes?",
    "03_finetune": "How well does this starting point classify, fold by fold and with fewer labels?",
    "04_baseline_comparison": "Which starting point classifies best: paired tests, ROC curves, calibration, per centre?",
    "05_error_analysis": "Which glomeruli does the model get wrong, and what do they look like?",
}
INDEX_CSS = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:62rem;margin:0 auto;padding:0 1rem;
color:#1d1d1d} h1{font-size:1.55em;line-height:1.25;margin:.6em 0 .1em} h2{font-size:1.25em;margin:1.2em 0 .3em}
.sub{color:#555;margin:0 0 .6em} a{color:#0b5394} table{border-collapse:collapse;max-width:100%} ol.pages span{color:#555}
th,td{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left;vertical-align:top} th{background:#f3f5f7} th:first-child{white-space:nowrap}
.answer{display:flex;flex-wrap:wrap;gap:0 1.5em} .answer td{white-space:nowrap} .answer>div{flex:1 1 20rem} .answer>div:first-child{flex:0 0 auto}
pre{background:#f6f8fa;padding:.6em;white-space:pre-wrap;font:inherit;font-size:.9em} ol.pages li{margin:.3em 0}
.note{background:#fff8e1;border-left:4px solid #E69F00;padding:.4em 1em}"""


def _table(rows: Iterable[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _answer(answer: dict[str, Any] | None, summary: dict[str, Any], link: str) -> str:
    """The headline tables: AUC per starting point and the paired differences, each with its 95 % CI."""
    if answer is None:
        rows = [
            {"init": i, "auc": f"{P.num(m['auc'].get('mean'))} ± {P.num(m['auc'].get('std'))}"}
            for i, m in summary.get("metrics", {}).items()
            if isinstance(m, dict) and "auc" in m
        ]
        cap = (
            "Mean ± standard deviation over the test folds; no confidence interval: the run holds no out-of-fold "
            "predictions of every starting point."
        )
        return P.table(rows, {"init": "Starting point", "auc": "AUC (mean ± SD)"}, caption=cap) if rows else ""
    t = answer["task"]
    rows = [{"init": r["init"], "auc": P.ci(r["auc"], r["lo"], r["hi"])} for r in answer["auc"]]
    left = P.table(
        rows,
        {"init": "Starting point", "auc": "AUC (95 % CI)"},
        caption=(
            f"Pooled out-of-fold predictions of {P.count(t['n'])} glomeruli with {P.share(t['fraction'], 0)} of the "
            f"training labels; 95 % CI from {P.count(t['n_boot'])} bootstrap resamples of whole slides."
        ),
    )
    pairs = [
        {
            "pair": f"{r['a']} − {r['b']}",
            "d": P.ci(r["diff"], r["boot_ci_low"], r["boot_ci_high"], signed=True),
            "p": P.pvalue(r.get("delong_p")),
        }
        for r in answer["pairs"]
    ]
    right = P.table(
        pairs,
        {"pair": "Comparison", "d": "Difference in AUC (95 % CI)", "p": "Paired DeLong p"},
        caption="The same glomeruli scored by both; an interval that includes 0 means the data cannot "
        "tell the two apart (DeLong's p treats glomeruli as independent: the more optimistic test).",
    )
    return f'<div class="answer"><div>{left}</div><div>{right}</div></div>{link}'


def _summary(answer: dict[str, Any] | None, setting: str, demo: bool) -> str:
    if answer is None:
        why = "the run holds no complete out-of-fold predictions of every starting point (see the steps below)"
        return str(P.summary("The pages of this run and how it was made.", f"No comparison of starting points: {why}."))
    t = answer["task"]
    pos, neg = t["positive"], t["negative"]
    shows = [
        f"Whether a network that first learnt from these glomeruli without labels (**glom**{t['ssl_from']}) tells **{pos}** from "
        f"**{neg}** better than one pretrained on everyday photographs (**imagenet**) or trained from a random "
        "start (**scratch**).",
        f"{P.count(t['n'])} glomeruli ({P.count(t['n_pos'])} {pos}, {P.share(t['n_pos'] / max(t['n'], 1), 0)}) from "
        f"{P.count(t['slides'])} slides of {P.count(t['centres'])} centres; every glomerulus is scored by a model "
        "that never saw its slide (slide-grouped cross-validation).",
    ]
    # an order only where the CI as printed (3 decimals) excludes 0: "+0.000 to +0.026" claims none
    ends = [(round(r["boot_ci_low"], 3), round(r["boot_ci_high"], 3)) for r in answer["pairs"]]
    conclude = [P.claim_order(r["a"], r["b"], r["diff"], *e) for r, e in zip(answer["pairs"], ends)]
    if answer.get("budget_claims"):  # page 04's label-budget sentences follow: say which budget the first ones are
        conclude = [f"With {P.share(t['fraction'], 0)} of the training labels, " + c for c in conclude]
        conclude += answer["budget_claims"]
    caveat = f"{setting}: a demonstration of the workflow, not a result." if demo else ""
    return str(P.summary(shows, conclude, caveat))


def _page_list(pages: list[dict[str, str]]) -> str:
    def line(p: dict[str, str]) -> str:
        q = STEP_QUESTIONS.get(p.get("stem", ""), "")
        q = f" <span>&mdash; {html.escape(q)}</span>" if q else ""
        if not p.get("file"):
            return f"<li>{html.escape(p['title'])} &mdash; not run ({html.escape(str(p.get('status')))})</li>"
        return f'<li><a href="{html.escape(p["file"])}">{html.escape(p["title"])}</a>{q}</li>'

    return "".join(line(p) for p in pages)


def _run_rows(definition: dict[str, Any], provenance: dict[str, Any], run_name: str) -> list:
    prof, versions = definition.get("profile", {}), provenance.get("versions", {}) or {}
    rows = [
        ("Run", run_name),
        ("Profile", f"{prof.get('name', '?')}: {prof.get('description', '')}"),
        ("Data fingerprint", definition.get("data_fingerprint")),
        ("Code version (git commit)", str(provenance.get("git_commit") or "")[:12]),
        ("Software", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")),
        ("Run started (UTC)", str(definition.get("created_utc", provenance.get("created_utc", "")))[:16]),
        ("Report rendered (UTC)", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M")),
    ]
    return [(k, html.escape(str(v or "not recorded"))) for k, v in rows]


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


def _identifiers(pseudonymised: bool) -> str:
    if not pseudonymised:
        return "slide and patient identifiers are the data's real identifiers (not pseudonymised)"
    return (
        "slide and patient identifiers are stable pseudonyms (e.g. <code>slide-7f3a2c</code>) in the text, tables "
        "and figures; image file names drawn as pixels may still show a real slide name: check the galleries "
        "before sharing outside the lab"
    )


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
    answer: dict[str, Any] | None = None,
    settings: list[dict[str, str]] = (),
    setting: tuple[str, bool] = ("", False),
) -> Path:
    """The index: the answer with its CIs first, then what the report shows, the pages, the license, and the
    reproducibility details (run, code, data fingerprint, software, settings that differ from the defaults)."""
    prof = definition.get("profile", {})
    cmp = next((p for p in pages if p.get("stem") == "04_baseline_comparison" and p.get("file")), None)
    link = (
        cmp
        and f'<p>Paired tests, ROC curves and AUC within each centre: <a href="{cmp["file"]}">{cmp["title"]}</a>.</p>'
    )
    t = answer["task"] if answer else {}
    heading = f"{t['positive']} vs {t['negative']}: which starting point classifies best?" if t else "glomlib report"
    ident = _identifiers(bool(definition.get("pseudonymised_data")) or pseudonymised)
    cols = {"step": "Step", "setting": "Setting", "value": "This run", "default": "Default"}
    changed = P.table(settings, cols, caption="Settings of this run that differ from the notebooks' defaults.")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>glomlib report: {html.escape(run_name)}</title><style>{INDEX_CSS}</style></head><body>
<h1>{html.escape(heading)}</h1>
<p class="sub">glomlib report &middot; profile <strong>{html.escape(str(prof.get("name", "?")))}</strong> &middot; {ident}</p>
{_status_note(summary)}
{_summary(answer, *setting)}
<h2>The answer: AUC per starting point and paired differences</h2>
{_answer(answer, summary, link or "")}
<h2>Pages</h2>
<ol class="pages">{_page_list(pages)}</ol>
<h2>Dataset license and citation</h2>
<p><strong>License:</strong> {html.escape(license_info["license"])}</p>
<p><strong>Cite:</strong></p><pre>{html.escape(license_info["citation"])}</pre>
<h2 id="reproducibility">Reproducibility</h2>
{_table(_run_rows(definition, provenance, run_name))}
{changed if settings else ""}
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(scrub_html_literals(scrub(doc), scrub), encoding="utf-8")
    return path


def footer(
    license_info: dict[str, str], run_name: str, profile: str, fingerprint: str | None, commit: str | None
) -> str:
    return (
        f'<div class="glomlib-foot"><strong>Run</strong> {html.escape(run_name)} &middot; profile '
        f"{html.escape(profile)} &middot; data fingerprint <code>{html.escape(str(fingerprint))[:24]}</code> "
        f"&middot; git <code>{html.escape(str(commit))[:12]}</code> &middot; "
        f'<a href="index.html#reproducibility">settings and software versions</a><br>'
        f"<strong>Data license:</strong> {html.escape(license_info['license'])}"
        f"<pre><strong>Cite:</strong> {html.escape(license_info['citation'])}</pre></div>"
    )
