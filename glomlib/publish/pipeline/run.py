"""``run_pipeline``: make (or reopen) a run folder, execute its steps in order, render the report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glomlib.core.config import ConfigError
from glomlib.core.io import (
    ResumeError,
    acquire_lock,
    new_run_dir,
    release_lock,
    run_lock,
    sweep_stale_temp,
    utc_now,
    write_json_atomic,
    write_provenance,
)
from glomlib.publish.pipeline import identity
from glomlib.publish.pipeline.data import data_fingerprint, ensure_manifest, write_subset_manifest
from glomlib.publish.pipeline.execute import RunState, execute_step, notebook_completed, write_summary
from glomlib.publish.pipeline.params import notebook_parameters, notebook_paths, step_parameters
from glomlib.publish.pipeline.profiles import load_run_profile, resolve_profile_path, select_steps
from glomlib.publish.privacy import pseudonym_key, write_pseudonymised_manifest
from glomlib.publish.report import render_run
from glomlib.publish.steps import PipelineError, abs_in, find_project_root, plan_steps, refuse_real_identifiers
from glomlib.publish.steps import rel as _rel


def _run_folder(resume, root: Path) -> Path:
    run_dir = abs_in(resume, root).resolve()
    if not (run_dir / "pipeline.json").is_file():
        raise ResumeError(
            f"{run_dir} is not a pipeline run folder (no pipeline.json); give a folder made by 'glomlib run'."
        )
    return run_dir


def _reopen(run_dir: Path, profile, data, pseudonymise, accept: bool, root: Path, log) -> dict[str, Any]:
    """The run's ``pipeline.json`` after checking that nothing it was made from changed (identity.json); refuses
    another profile, data or pseudonymisation. With ``accept`` a change is recorded; a data change marks every
    step to run again."""
    definition = json.loads((run_dir / "pipeline.json").read_text())
    sweep_stale_temp(run_dir, recursive=True)  # temp files of killed steps
    name = _rel(run_dir, root)
    if pseudonymise:
        refuse_real_identifiers(name, definition)
    if profile is not None and load_run_profile(profile)["name"] != definition["profile"]["name"]:
        raise ResumeError(
            f"{name} was made with profile {definition['profile']['name']!r}; --resume uses the run's own profile, "
            "drop --profile."
        )
    if data is not None and _rel(abs_in(data, root), root) != definition["data_source"]:
        raise ResumeError(
            f"{name} was made with data {definition['data_source']!r}; --resume uses the run's own data, drop --data."
        )
    log(f"Resuming {name} (profile {definition['profile']['name']}); checking its data and settings ...")
    positive = str(definition["profile"]["common"].get("positive_label", ""))
    now = identity.run_identity(definition, identity.data_identity(definition, root, positive))
    changed = identity.check(run_dir, name, now, accept, log)
    if any(c.startswith("data.") for c in changed):
        RunState(run_dir).mark_all_stale()
        log("  the data changed: every step runs again (earlier outputs are kept as *.previous-N)")
    return definition


def _existing(path: str | None, root: Path, what: str) -> Path | None:
    p = abs_in(path, root) if path else None
    if p is not None and not p.is_file():
        raise PipelineError(what)
    return p


def _prepare_data(prof, source: Path, ext: Path | None, run_dir: Path, pseudonymise: bool, root: Path, log):
    """The manifests the notebooks get (a subset, pseudonymised copies) and the data fingerprint."""
    positive = str(prof["common"].get("positive_label", ""))  # "": the data's dataset.json names it
    used = source
    if prof.get("subset"):
        used = write_subset_manifest(source, run_dir / "data" / "manifest.csv", prof["subset"], positive)
        log(f"  using a slice of the data ({prof['subset']}) -> {_rel(used, root)}")
    if pseudonymise:
        dest = run_dir / "data" / "manifest-pseudonymised.csv"
        used = write_pseudonymised_manifest(used, dest, pseudonym_key(root), positive)
        log(f"  slide identifiers replaced by pseudonyms -> {_rel(used, root)}")
    if ext is not None and pseudonymise:
        dest = run_dir / "data" / "external-pseudonymised.csv"
        ext = write_pseudonymised_manifest(ext, dest, pseudonym_key(root), positive)
        log(f"  external slide identifiers replaced by pseudonyms -> {_rel(ext, root)}")
    log("  checking and fingerprinting the data ...")
    return used, ext, data_fingerprint(used, positive)


def _definition(prof, steps, declared, params, root: Path, paths, fingerprint, pseudonymise) -> dict[str, Any]:
    return {
        "profile": prof,
        "data": _rel(paths["used"], root),
        "data_source": _rel(paths["source"], root),
        "data_fingerprint": fingerprint,
        "ssl_data": _rel(paths["ssl"], root) if paths["ssl"] else None,
        "notebooks_dir": _rel(paths["notebooks"], root),
        "inits": prof["inits"],
        "steps": [
            {"id": s.id, "notebook": f"{s.stem}.ipynb", "out": s.out, "executed": f"notebooks/{s.executed_name}"}
            for s in steps
        ],
        "parameters": params,
        "pseudonymised_data": pseudonymise,
        "resumable": [stem for stem, d in declared.items() if "resume" in d],
        "created_utc": utc_now(),
    }


def _create(profile, data, ssl_data, only, pseudonymise, runs_root, notebooks_dir, root: Path, log):
    """A new run folder with its data, ``pipeline.json``, profile copy and provenance; checks everything first."""
    if profile is None:
        raise ConfigError("Give --profile NAME_OR_YAML (or --resume RUN_DIR).")
    prof = load_run_profile(profile)
    nb_dir = abs_in(notebooks_dir, root) if notebooks_dir else root / "notebooks"
    declared = {stem: notebook_parameters(p) for stem, p in notebook_paths(nb_dir).items()}
    steps = plan_steps(prof)
    select_steps(steps, only)  # validate --only before creating anything
    source = ensure_manifest(data, root)
    step_parameters(prof, declared, "RUN", "DATA", external_rel="EXTERNAL" if prof.get("external") else None)
    ext_says = "give the path of a labelled manifest CSV (path, label, slide[, center])."
    ext = prof.get("external") and str(prof["external"])
    ext = _existing(ext, root, f"profile {prof['name']!r}: external manifest {ext} does not exist; {ext_says}")
    ssl = _existing(ssl_data, root, f"--ssl-data {ssl_data}: no such manifest.")
    run_dir = new_run_dir(abs_in(runs_root, root), prof["name"]).resolve()
    lock, _ = acquire_lock(run_dir)  # held from the first moment: a resume of the new folder waits its turn
    log(f"Run folder: {_rel(run_dir, root)}")
    try:
        used, ext, fingerprint = _prepare_data(prof, source, ext, run_dir, pseudonymise, root, log)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing ran: leave no half-made run folder
        raise
    rels = [_rel(p, root) if p else None for p in (run_dir, used, ssl, ext)]
    params = step_parameters(prof, declared, rels[0], rels[1], rels[2], external_rel=rels[3])
    paths = {"used": used, "source": source, "ssl": ssl, "notebooks": nb_dir}
    definition = _definition(prof, steps, declared, params, root, paths, fingerprint, pseudonymise)
    positive = str(prof["common"].get("positive_label", ""))
    identity.record(run_dir, identity.run_identity(definition, identity.data_identity(definition, root, positive)))
    write_json_atomic(run_dir / "pipeline.json", definition)
    shutil.copy2(resolve_profile_path(profile), run_dir / "profile.yaml")
    config = {"profile": prof, "data": definition["data"], "parameters": params}
    write_provenance(run_dir, config=config, data_fingerprint=fingerprint, extra={"pipeline": "glomlib run"})
    return run_dir, definition, lock


def _tee(log: Callable[[str], None], path: Path) -> Callable[[str], None]:
    """``log`` that also appends every line to ``path`` (the run's pipeline.log)."""

    def both(msg: str) -> None:
        log(msg)
        with open(path, "a", encoding="utf-8") as f:
            f.write(msg + "\n")

    return both


def _execute(steps, chosen, only, nbs, definition, run_dir: Path, root: Path, log) -> None:
    """Execute the chosen steps (without --only, the ones not completed yet), then write summary.json."""
    state = RunState(run_dir, steps)
    for s in chosen:  # interrupted after its notebook was saved whole: the step is done (no .failed-N, no rerun)
        if state.get(s).get("status") in ("running", "failed") and notebook_completed(
            run_dir / "notebooks" / s.executed_name
        ):
            state.update(s, status="completed", note="its notebook had finished when the run was interrupted")
    done = [s for s in chosen if state.get(s).get("status") == "completed"]
    todo = [
        s for s in chosen if only or not (s in done and notebook_completed(run_dir / "notebooks" / s.executed_name))
    ]
    for s in chosen:
        if s not in todo:
            log(f"  - {s.id}: completed earlier, skipped")
    try:
        for i, step in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {step.id} -> {_rel(run_dir / step.out, root)} ...")
            t0 = time.monotonic()
            resumable = step.stem in definition.get("resumable", [])
            try:
                execute_step(
                    step, nbs[step.stem], definition["parameters"][step.id], run_dir, root, state, log, resumable
                )
            except PipelineError as e:  # the CLI prints it; the run's log keeps it too
                with open(run_dir / "pipeline.log", "a", encoding="utf-8") as f:
                    f.write(f"FAILED: {e}\n")
                raise
            log(f"      done in {time.monotonic() - t0:.0f} s")
    finally:
        write_summary(run_dir, root, definition, state)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (and SIGHUP) stop the run like Ctrl-C: the running step is marked failed, the lock is released, and
    ``--resume`` continues. Only in the main thread (signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _render(run_dir: Path, definition, pseudonymise: bool, reports_root, root: Path, log) -> None:
    pseudo = pseudonymise or bool(definition.get("pseudonymised_data"))
    index = render_run(run_dir, reports_root=abs_in(reports_root, root), pseudonymise=pseudo, project_root=root)
    log(f"Report: {_rel(index, root)} (one file to e-mail: {_rel(index.parent, root)}.zip)")


def _go(run_dir: Path, definition, opts: dict[str, Any], root: Path, log) -> None:
    """Execute the run's chosen steps and render the report; a failed step is still reported (the page says
    that it failed, in words) before its PipelineError reaches the command (exit 6)."""
    only, resume = opts["only"], opts["resume"]
    prof = definition["profile"]
    nbs = notebook_paths(abs_in(definition["notebooks_dir"], root))
    log = _tee(log, run_dir / "pipeline.log")
    log(
        f"--- {utc_now()} glomlib run {'--resume' if resume else '--profile ' + str(prof['name'])}"
        f"{' --only ' + ','.join(only) if only else ''} (pid {os.getpid()})"
    )
    steps = plan_steps(prof)
    chosen = select_steps(steps, only)
    t_start = time.monotonic()
    try:
        _execute(steps, chosen, only, nbs, definition, run_dir, root, log)
    except PipelineError:
        if opts["render"]:
            _render(run_dir, definition, opts["pseudonymise"], opts["reports_root"], root, log)
        raise
    log(f"All requested steps done in {time.monotonic() - t_start:.0f} s. Run folder: {_rel(run_dir, root)}")
    later = [s.id for s in steps if s not in chosen and steps.index(s) > steps.index(chosen[0])] if only else []
    if resume and later:
        log(f"  note: later steps ({', '.join(later)}) were not re-run; add them to --only if they depend on it.")
    if opts["render"]:
        _render(run_dir, definition, opts["pseudonymise"], opts["reports_root"], root, log)


def run_pipeline(
    profile: str | Path | None = None,
    *,
    data: str | None = None,
    ssl_data: str | None = None,
    resume: str | Path | None = None,
    only: list[str] | None = None,
    pseudonymise: bool = False,
    runs_root: str | Path = "runs",
    reports_root: str | Path = "reports",
    notebooks_dir: str | Path | None = None,
    project_root: str | Path | None = None,
    render: bool = True,
    accept_changes: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) the pipeline; returns the run folder. The run folder is locked for the whole call (a
    second writer is refused at start). Raises PipelineError/ConfigError/ResumeError with a clear message."""
    log = log or (lambda m: print(m, flush=True))
    root = Path(project_root).resolve() if project_root else find_project_root()
    opts = dict(only=only, resume=resume, render=render, pseudonymise=pseudonymise, reports_root=reports_root)
    with _terminate_as_interrupt():
        if resume:
            run_dir = _run_folder(resume, root)
            with run_lock(run_dir) as stale:
                if stale:
                    log(f"  {_rel(run_dir, root)}: {stale}")
                definition = _reopen(run_dir, profile, data, pseudonymise, accept_changes, root, log)
                _go(run_dir, definition, opts, root, log)
            return run_dir
        run_dir, definition, lock = _create(
            profile, data, ssl_data, only, pseudonymise, runs_root, notebooks_dir, root, log
        )
        try:
            _go(run_dir, definition, opts, root, log)
        finally:
            release_lock(lock)
        return run_dir
