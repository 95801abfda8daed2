"""Render a pipeline run's executed notebooks into shareable, code-free HTML reports under ``reports/<run>/``.

The same folder is written as one file to e-mail, ``reports/<run>.zip``.

``index.html`` (:mod:`.index`) leads with the answer (AUC per initialisation and the paired differences, each with
a 95 % CI, :mod:`.headline`), then links one self-contained page per notebook (:mod:`.pages`) and ends with the
dataset's license and citation and the reproducibility details. Every text is scrubbed (:mod:`.scrub`): absolute
paths, user and host names.

What ``--pseudonymise`` covers. A run made with ``glomlib run --pseudonymise`` gives its notebooks a manifest whose
``slide`` and ``patient`` columns already hold stable pseudonyms (``slide-7f3a2c``), so everything the notebooks
compute and draw from those columns shows pseudonyms: text, tables and figures (axis labels, captions, tile
captions). The rendered text, tables and vector figures are scrubbed again (a real identifier left in text becomes
its pseudonym). It does NOT cover: image file names drawn as pixels (a figure titled with a file name keeps the
real slide ID), identifiers inside the images themselves, centre names (kept), and the run folder ``runs/<run>/``
(share the report, not the run folder). A run made without it cannot be pseudonymised afterwards (refused): its
figures draw real identifiers as pixels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glomlib.publish.privacy import pseudonym, pseudonym_key  # noqa: F401
from glomlib.publish.report.headline import changed_settings, comparison, settings_sentence
from glomlib.publish.report.index import GLOMERULI_PAS_LICENSE, STEP_TITLES, dataset_license, footer, render_index  # noqa: F401
from glomlib.publish.report.pages import notebook_title, render_notebook
from glomlib.publish.report.scrub import Scrubber, manifest_info
from glomlib.publish.steps import find_project_root, plan_steps, refuse_real_identifiers


def _json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _scrubber(definition: dict[str, Any], root: Path, pseudonymise: bool) -> tuple[Scrubber, Path]:
    """The run's scrubber (its data folders; with ``pseudonymise`` its slides and patients) and its source manifest."""
    data, source = (Path(definition.get(k, definition["data"])) for k in ("data", "data_source"))
    data, source = (p if p.is_absolute() else root / p for p in (data, source))
    info, src_info = manifest_info(data), manifest_info(source)
    data_dirs = [d for d in (source.parent, data.parent, info["image_root"], src_info["image_root"]) if d]
    if not pseudonymise:
        return Scrubber(root, data_dirs), source
    slides = sorted(set(info["slides"]) | set(src_info["slides"]))
    patients = sorted(set(info["patients"]) | set(src_info["patients"]))
    return Scrubber(root, data_dirs, slides, patients, key=pseudonym_key(root)), source


def _render_pages(run_dir: Path, root: Path, definition, state, tmp: Path, scrub, foot: str, log) -> list[dict]:
    """One page per completed step (``file`` empty for a step that did not complete)."""
    import nbformat

    pages = []
    for step in plan_steps(definition["profile"]):
        st = state["steps"].get(step.id, {}).get("status", "pending")
        nb_path = run_dir / "notebooks" / step.executed_name
        title = STEP_TITLES.get(step.stem, step.stem)
        if st != "completed" or not nb_path.is_file():
            pages.append({"file": "", "title": title + (f" ({step.init})" if step.init else ""), "status": st})
            pages[-1]["stem"] = step.stem
            continue
        title = notebook_title(nbformat.read(str(nb_path), as_version=4), title)
        if step.init and not re.search(rf"(?<![\w-]){re.escape(step.init)}(?![\w-])", title):
            title = f"{title}: init {step.init}"
        out_html = tmp / (Path(step.executed_name).stem + ".html")
        log(f"  rendering {step.executed_name} -> {out_html.name}")
        bases = [root, run_dir, run_dir / step.out]
        render_notebook(nb_path, out_html, title=scrub(title), scrub=scrub, footer_html=foot, bases=bases, log=log)
        pages.append({"file": out_html.name, "title": scrub(title), "status": st, "stem": step.stem})
    return pages


def _replace(tmp: Path, final: Path) -> None:
    """Put the new rendering in place of an earlier one as a whole."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    part = final.parent / f".{final.name}.zip.part"
    with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(final.glob("*.html")):
            z.write(f, f"{final.name}/{f.name}")
    part.replace(final.parent / f"{final.name}.zip")


def render_run(
    run_dir: str | Path,
    *,
    reports_root: str | Path = "reports",
    pseudonymise: bool = False,
    project_root: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Render every executed notebook of a pipeline run into ``reports_root/<run>[-pseudonymised]/``;
    returns the index page; ``reports_root/<name>.zip`` holds the same pages as one file to e-mail. An earlier
    rendering of the same run is replaced as a whole."""
    log = log or (lambda m: print(m, flush=True))
    root = Path(project_root).resolve() if project_root else find_project_root()
    run_dir = Path(run_dir).resolve()
    definition = json.loads((run_dir / "pipeline.json").read_text())
    if pseudonymise:
        refuse_real_identifiers(run_dir.name, definition)
    state = _json(run_dir / "state.json", {"steps": {}})
    provenance = _json(run_dir / "provenance.json", {})
    scrub, source = _scrubber(definition, root, pseudonymise)
    license_info = dataset_license(source)
    name = run_dir.name + ("-pseudonymised" if pseudonymise else "")
    reports_root = Path(reports_root) if Path(reports_root).is_absolute() else root / reports_root
    tmp = reports_root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    profile, fingerprint = str(definition.get("profile", {}).get("name")), definition.get("data_fingerprint")
    foot = footer(license_info, run_dir.name, profile, fingerprint, provenance.get("git_commit"))
    pages = _render_pages(run_dir, root, definition, state, tmp, scrub, foot, log)
    render_index(
        tmp,
        run_name=run_dir.name,
        pages=pages,
        definition=definition,
        provenance=provenance,
        summary=_json(run_dir / "summary.json", {}),
        license_info=license_info,
        pseudonymised=pseudonymise,
        scrub=scrub,
        answer=comparison(run_dir, definition),
        settings=changed_settings(run_dir, plan_steps(definition["profile"]), STEP_TITLES),
        setting=settings_sentence(run_dir, plan_steps(definition["profile"]), definition["profile"]),
    )
    _replace(tmp, reports_root / name)
    return reports_root / name / "index.html"
