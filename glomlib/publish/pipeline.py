"""One command from data to shareable reports: ``glomlib run --profile quick-cpu``.

Executes the numbered notebooks with papermill (cwd = project root, kernel ``python3``) into ONE run folder
``runs/<UTC stamp>-<profile>/``::

    notebooks/            the executed notebooks (kept even when a cell fails)
    audit/                01_data_audit          (out)
    ssl/                  02_simclr_pretrain     (out)
    finetune/<init>/      03_finetune, once per init in the profile's ``inits``
                          (gets ssl_checkpoint=<run>/ssl/encoder.safetensors)
    comparison/           04_baseline_comparison (gets runs=<run>/finetune)
    errors/               05_error_analysis      (gets run=<run>/finetune/glom, or the first init)
    external/             06_external_validation, only when the profile names ``external: MANIFEST`` (a labelled
                          manifest of another hospital; gets model=<run>/finetune/<same init as 05>/model.safetensors)
    data/manifest.csv     only when the profile has a ``subset`` (a small slice of the data, e.g. smoke)
    pipeline.json         what this run is: profile, data, parameters given to every notebook
    state.json            status of every step (pending/running/completed/failed), used by --resume
    pipeline.log          what each invocation did and how long every step took
    provenance.json       config, software versions, data fingerprint, git commit
    summary.json          headline metrics per init and ``models: {init: path}``

Then renders every executed notebook to a code-free HTML page (:mod:`glomlib.publish.report`) under
``reports/<run>/index.html``.

A profile (``glomlib/profiles/<name>.yaml`` or any YAML file) holds::

    description: ...
    inits: [glom, imagenet, scratch]     # notebook 03 runs once per init
    subset: {slides: 6, per_slide_label: 4, seed: 0}   # optional: run on a small slice of the manifest
    common: {positive_label: GS, image_size: 64}       # given to every notebook that declares the name
    steps:
      02_simclr_pretrain: {epochs: 5}                   # given to that notebook; unknown names are an error
      03_finetune: {epochs: 3, per_init: {scratch: {lr: 0.001}}}   # per_init: extra parameters for one init
    external: other_hospital/manifest.csv              # optional: also run 06_external_validation on it

``data``, ``out``, ``init``, ``ssl_checkpoint``, ``runs``, ``run``, ``model`` and ``manifest`` are set by the
pipeline, never by a profile.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from glomlib.core import progress
from glomlib.core.config import PROFILES_DIR, ConfigError, list_profiles
from glomlib.core.io import new_run_dir, sweep_stale_temp, write_json_atomic, write_provenance
from glomlib.publish.privacy import pseudonym_key, write_pseudonymised_manifest
from glomlib.publish.report import render_run
from glomlib.publish.steps import PipelineError, refuse_real_identifiers
from glomlib.publish.steps import (OPTIONAL_PIPELINE_PARAMS, OPTIONAL_STEMS, PIPELINE_PARAMS, PROFILE_KEYS, STEMS,
                                   SUBSET_KEYS, Step, find_project_root, plan_steps)

DEFAULT_DATA = "data/glomeruli-pas/manifest.csv"
DEFAULT_INITS = ("glom", "imagenet", "scratch")
KERNEL = "python3"

# --------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the project root when inside it (keeps absolute paths out of notebooks), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _abs(path: str | Path, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def notebook_paths(notebooks_dir: Path) -> dict[str, Path]:
    """Map every step's stem to its notebook file in ``notebooks_dir``; clear error if one is missing."""
    found = {stem: notebooks_dir / f"{stem}.ipynb" for stem in STEMS}
    found = {s: p for s, p in found.items() if p.is_file() or s not in OPTIONAL_STEMS}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise PipelineError(
            f"Notebook(s) missing: {missing}. The pipeline runs {', '.join(STEMS)} from {notebooks_dir}; "
            "pass --notebooks DIR if they live elsewhere."
        )
    return found


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its cell tagged ``parameters`` (name -> default).

    Parsed with Python's ``ast`` (every top-level assignment); papermill's ``inspect_notebook`` is the
    fallback for cells ``ast`` cannot parse. (papermill's own parser skips a line whose comment contains
    ``=``, e.g. ``out = "auto"  # "auto" = new folder``; tests/test_notebooks.py flags such lines.)
    """
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise PipelineError(f"Notebook {path.name} has no cell tagged 'parameters'; tag its first code cell "
                            "'parameters' (papermill puts the given values right after it).")
    params: dict[str, Any] = {}
    try:
        for node in ast.parse(cells[0].source).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        try:
                            params[t.id] = ast.literal_eval(node.value) if node.value is not None else None
                        except ValueError:
                            params[t.id] = ast.unparse(node.value)
    except SyntaxError:
        import papermill

        params = {k: v.get("default") for k, v in papermill.inspect_notebook(str(path)).items()}
    if not params:
        raise PipelineError(f"Notebook {path.name}: its 'parameters' cell holds no assignments.")
    return params


# --------------------------------------------------------------------------------------------- profiles
def resolve_profile_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        candidate = PROFILES_DIR / f"{name_or_path}.yaml"
        if not candidate.exists():
            raise ConfigError(
                f"No profile named {str(name_or_path)!r}. Available: {list_profiles()}; or give a path to a YAML file."
            )
        return candidate
    if not p.exists():
        raise ConfigError(f"Profile file {p} does not exist.")
    return p


def load_run_profile(name_or_path: str | Path) -> dict[str, Any]:
    """Load and check a pipeline profile (see the module docstring for its keys)."""
    import yaml

    p = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Profile {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Profile {p} must be a mapping with 'common' and 'steps' keys.")
    bad = sorted(set(data) - PROFILE_KEYS)
    if bad:
        raise ConfigError(f"Profile {p}: unknown top-level key(s) {bad}; use {sorted(PROFILE_KEYS)}.")
    data.setdefault("name", p.stem)
    data["common"] = data.get("common") or {}
    data["steps"] = data.get("steps") or {}
    inits = data.get("inits", list(DEFAULT_INITS))
    if isinstance(inits, str):
        inits = [inits]
    if not inits or not all(isinstance(i, str) and i for i in inits) or len(set(inits)) != len(inits):
        raise ConfigError(f"Profile {p}: 'inits' must be a non-empty list of distinct names, got {inits!r}.")
    data["inits"] = list(inits)
    if not isinstance(data["common"], dict) or not isinstance(data["steps"], dict):
        raise ConfigError(f"Profile {p}: 'common' and 'steps' must be mappings.")
    unknown_steps = sorted(set(data["steps"]) - set(STEMS))
    if unknown_steps:
        raise ConfigError(f"Profile {p}: unknown step(s) {unknown_steps} under 'steps'; steps are {list(STEMS)}.")
    for stem, params in data["steps"].items():
        if params is None:
            data["steps"][stem] = {}
        elif not isinstance(params, dict):
            raise ConfigError(f"Profile {p}: steps.{stem} must be a mapping of parameter: value.")
    subset = data.get("subset")
    if subset is not None:
        if not isinstance(subset, dict) or set(subset) - SUBSET_KEYS:
            raise ConfigError(f"Profile {p}: 'subset' must be a mapping with keys from {sorted(SUBSET_KEYS)}.")
    data["source"] = p.name
    return data


def errors_init(profile: dict[str, Any]) -> str:
    """The init whose fine-tune run notebook 05 analyses: glom when present, else the first one."""
    return "glom" if "glom" in profile["inits"] else profile["inits"][0]


def step_parameters(profile: dict[str, Any], declared: dict[str, dict[str, Any]], run_rel: str,
                    data_rel: str, ssl_data_rel: str | None = None,
                    external_rel: str | None = None) -> dict[str, dict[str, Any]]:
    """Parameters for every step id. ``declared``: notebook stem -> its declared parameters.

    Raises ConfigError naming the key and notebook for a profile key no notebook declares, a step key its
    notebook does not declare, a pipeline-owned key set in a profile, or a pipeline parameter a notebook lacks.
    """
    name = profile.get("name", "?")
    errors: list[str] = []
    if profile.get("external") and "06_external_validation" not in declared:
        errors.append("the profile names an external manifest but notebooks/06_external_validation.ipynb is missing")
    for stem, owned in PIPELINE_PARAMS.items():
        if stem not in declared and stem in OPTIONAL_STEMS:
            continue
        missing = [k for k in owned if k not in declared[stem]]
        if missing:
            errors.append(f"notebook {stem}.ipynb does not declare the pipeline parameter(s) {missing} in its "
                          f"'parameters' cell (declared: {sorted(declared[stem])})")
    common = dict(profile["common"])
    owned_by = {stem: set(PIPELINE_PARAMS[stem]) | set(OPTIONAL_PIPELINE_PARAMS.get(stem, ())) for stem in STEMS}
    for key in common:
        if any(key in owned for owned in owned_by.values()):
            errors.append(f"common.{key} is set by the pipeline; remove it from the profile (use --data for data)")
        elif not any(key in d for d in declared.values()):
            errors.append(f"common.{key} is not a parameter of any notebook "
                          f"({', '.join(f'{s}: {sorted(d)}' for s, d in declared.items())})")
    for stem, params in profile["steps"].items():
        for key, value in params.items():
            if key == "per_init" and stem == "03_finetune":
                if not isinstance(value, dict) or set(value) - set(profile["inits"]):
                    errors.append(f"steps.03_finetune.per_init must map inits {profile['inits']} to parameters")
                    continue
                for init, extra in value.items():
                    for k in extra or {}:
                        if k in owned_by[stem] or k not in declared[stem]:
                            errors.append(f"steps.03_finetune.per_init.{init}.{k}: not a settable parameter of "
                                          f"notebook 03_finetune.ipynb (declared: {sorted(declared[stem])})")
                continue
            if key in owned_by[stem]:
                errors.append(f"steps.{stem}.{key} is set by the pipeline; remove it from the profile")
            elif key not in declared[stem]:
                errors.append(f"steps.{stem}.{key}: notebook {stem}.ipynb has no parameter {key!r} "
                              f"(its parameters: {sorted(declared[stem])})")
    if errors:
        raise ConfigError(f"Profile {name!r}:\n  - " + "\n  - ".join(errors))

    out: dict[str, dict[str, Any]] = {}
    for step in plan_steps(profile):
        d = declared[step.stem]
        p = {k: v for k, v in common.items() if k in d}
        p.update({k: v for k, v in profile["steps"].get(step.stem, {}).items() if k != "per_init"})
        if "data" in d:
            p["data"] = ssl_data_rel if (ssl_data_rel and step.stem == "02_simclr_pretrain") else data_rel
        p["out"] = f"{run_rel}/{step.out}"
        if step.stem == "03_finetune":
            p["init"] = step.init
            p["ssl_checkpoint"] = f"{run_rel}/ssl/encoder.safetensors"
            p.update((profile["steps"].get(step.stem, {}).get("per_init") or {}).get(step.init) or {})
        elif step.stem == "04_baseline_comparison":
            p["runs"] = f"{run_rel}/finetune"
            if "inits" in d:
                p["inits"] = list(profile["inits"])
            if "ssl_checkpoint" in d:
                p["ssl_checkpoint"] = f"{run_rel}/ssl/encoder.safetensors"
        elif step.stem == "05_error_analysis":
            p["run"] = f"{run_rel}/finetune/{errors_init(profile)}"
        elif step.stem == "06_external_validation":
            p["model"] = f"{run_rel}/finetune/{errors_init(profile)}/model.safetensors"
            p["manifest"] = external_rel or str(profile.get("external"))
        out[step.id] = p
    return out


def select_steps(steps: list[Step], only: Iterable[str] | None) -> list[Step]:
    if not only:
        return list(steps)
    chosen: list[Step] = []
    for token in only:
        tok = token.strip().removesuffix(".ipynb")
        hits = [s for s in steps if tok in s.aliases()]
        if not hits:
            valid = sorted({a for s in steps for a in s.aliases()})
            raise ConfigError(f"--only {token!r} matches no step of this run; use one of {valid}.")
        chosen += [h for h in hits if h not in chosen]
    return [s for s in steps if s in chosen]  # keep pipeline order


# --------------------------------------------------------------------------------------------- data
def ensure_manifest(data: str | None, root: Path) -> Path:
    path = _abs(data or DEFAULT_DATA, root)
    if path.is_file():
        return path
    if data is None or Path(data).as_posix() == DEFAULT_DATA:
        try:
            from glomlib.data.public import ensure_default_manifest
        except ImportError as e:
            raise PipelineError(f"{path} does not exist and glomlib.data.public is unavailable ({e}); "
                                "run 'glomlib data fetch glomeruli-pas' or pass --data MANIFEST.") from e
        return Path(ensure_default_manifest(path)).resolve()
    raise PipelineError(f"Manifest {path} does not exist; pass --data MANIFEST.csv (see data/README.md).")


def read_manifest_df(path: Path, positive_label: str):
    from glomlib.data.manifest import read_manifest

    return read_manifest(path, positive_label=positive_label)


def data_fingerprint(path: Path, positive_label: str) -> str:
    """Fingerprint of the manifest's data (file contents + labels); validates the manifest on the way."""
    try:
        from glomlib.data.manifest import data_fingerprint as fp
    except ImportError:  # data layer not available: fall back to the manifest bytes
        return "manifest-sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return fp(read_manifest_df(path, positive_label))


def write_subset_manifest(src: Path, dest: Path, subset: dict[str, Any], positive_label: str) -> Path:
    """A small, deterministic slice of ``src``: ``slides`` slides (round-robin over centres, slides holding
    both labels first), at most ``per_slide_label`` images per slide and label. Paths are written relative
    to ``dest``'s folder so no absolute path travels into the notebooks."""
    import numpy as np
    import pandas as pd

    df = read_manifest_df(src, positive_label)
    n_slides = int(subset.get("slides", 6))
    per = int(subset.get("per_slide_label", 4))
    rng = np.random.default_rng(int(subset.get("seed", 0)))
    stats = df.groupby("slide")["y"].agg(lambda y: len(set(y)))
    slides = sorted(df["slide"].unique(), key=lambda s: (-stats[s], s))
    by_centre: dict[str, list[str]] = {}
    for s in slides:
        by_centre.setdefault(str(df.loc[df["slide"] == s, "center"].iloc[0]), []).append(s)
    picked: list[str] = []
    while len(picked) < n_slides and any(by_centre.values()):
        for c in sorted(by_centre):
            if by_centre[c] and len(picked) < n_slides:
                picked.append(by_centre[c].pop(0))
    parts = []
    for s in picked:
        for _, g in df[df["slide"] == s].groupby("y"):
            idx = rng.permutation(len(g))[:per]
            parts.append(g.iloc[sorted(idx)])
    sub = pd.concat(parts)
    from glomlib.data.manifest import write_manifest

    dest.parent.mkdir(parents=True, exist_ok=True)
    cols = ["path", "label", "slide"] + [c for c in ("patient", "center", "mask") if (sub[c] != "").any()
                                         and not (c == "patient" and (sub["patient"] == sub["slide"]).all())]
    write_manifest(sub[cols], dest)
    for extra in ("dataset.json", "LICENSE", "CITATION", "CITATION.txt", "CITATION.cff", "README.md"):  # license travels along
        if (src.parent / extra).is_file():
            shutil.copy2(src.parent / extra, dest.parent / extra)
    return dest


# --------------------------------------------------------------------------------------------- state
class RunState:
    """``state.json``: the status of every step, written atomically after every change."""

    def __init__(self, run_dir: Path, steps: list[Step] | None = None):
        self.path = run_dir / "state.json"
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
        else:
            self.data = {"steps": {}}
        for s in steps or []:
            self.data["steps"].setdefault(s.id, {"status": "pending", "notebook": f"notebooks/{s.executed_name}",
                                                 "out": s.out})
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def get(self, step: Step) -> dict[str, Any]:
        return self.data["steps"].setdefault(step.id, {"status": "pending"})

    def update(self, step: Step, **kw: Any) -> None:
        self.get(step).update(kw)
        self.save()


def notebook_completed(path: Path) -> bool:
    """True when the executed notebook exists and papermill recorded no exception for it."""
    if not path.is_file():
        return False
    try:
        import nbformat

        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return False
    pm = nb.metadata.get("papermill", {})
    if pm.get("exception"):
        return False
    statuses = [c.metadata.get("papermill", {}).get("status") for c in nb.cells if c.cell_type == "code"]
    return all(s in (None, "completed") for s in statuses) and bool(pm)


def _move_aside(path: Path, label: str) -> Path | None:
    """Keep an earlier attempt's output: rename ``path`` to ``path.<label>-N`` (never overwritten)."""
    if not path.exists():
        return None
    for n in range(1, 1000):
        target = path.with_name(f"{path.name}.{label}-{n}")
        if not target.exists():
            path.rename(target)
            return target
    raise PipelineError(f"Too many earlier attempts next to {path}; clean them up.")


def _tee(log: Callable[[str], None], path: Path) -> Callable[[str], None]:
    """``log`` that also appends every line to ``path`` (the run's pipeline.log)."""
    def both(msg: str) -> None:
        log(msg)
        with open(path, "a", encoding="utf-8") as f:
            f.write(msg + "\n")
    return both


# --------------------------------------------------------------------------------------------- execution
#: the kernel logs errors only: its "running over TCP without encryption" warning means nothing to a user here
#: (the kernel listens on localhost for this one papermill client)
KERNEL_ARGS = ["--log-level=ERROR"]


@contextlib.contextmanager
def _streamed_progress(path: Path, log: Callable[[str], None]):
    """While a notebook runs: its steps append progress lines (epochs, folds, images/s, time left) to ``path``
    (``$GLOMLIB_PROGRESS_FILE``, inherited by the kernel) and a thread prints them to the terminal; the
    executed notebook, and so the report, gets none of them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = str(path)
    try:
        with progress.Tail(path, lambda line: log(f"      {line}")):
            yield
    finally:
        if old is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = old


def execute_step(step: Step, notebook: Path, params: dict[str, Any], run_dir: Path, root: Path,
                 state: RunState, log: Callable[[str], None], resumable: bool = False) -> None:
    """Execute one notebook. An earlier attempt's notebook and output folder are kept beside the new ones
    (``*.failed-N`` / ``*.previous-N``); a failed step whose notebook declares ``resume`` continues in its
    output folder with ``resume=True`` instead (finished work, e.g. SSL epochs or CV folds, is reused)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed = run_dir / "notebooks" / step.executed_name
    executed.parent.mkdir(parents=True, exist_ok=True)
    prev = state.get(step).get("status")
    params = dict(params)
    if prev in ("failed", "running", "completed") or executed.exists() or (run_dir / step.out).exists():
        label = "failed" if prev in ("failed", "running") else "previous"
        continue_out = label == "failed" and resumable and (run_dir / step.out).is_dir()
        if continue_out:
            params["resume"] = True
            log(f"    continuing the interrupted work in {_rel(run_dir / step.out, root)} (resume=True)")
        kept = [_move_aside(executed, label), None if continue_out else _move_aside(run_dir / step.out, label)]
        kept = [_rel(k, root) for k in kept if k]
        if kept:
            log(f"    kept the earlier attempt as {', '.join(kept)}")
    state.update(step, status="running", started=_now(), finished=None, error=None, parameters=params)
    t0 = time.monotonic()
    try:
        with _streamed_progress(run_dir / "progress" / f"{Path(step.executed_name).stem}.log", log):
            papermill.execute_notebook(
                str(notebook), str(executed), parameters=params, kernel_name=KERNEL, cwd=str(root),
                progress_bar=sys.stderr.isatty(), log_output=False, request_save_on_cell_execute=True,
                extra_arguments=KERNEL_ARGS,
            )
    except PapermillExecutionError as e:
        msg = f"{e.ename}: {e.evalue}"
        state.update(step, status="failed", finished=_now(), seconds=round(time.monotonic() - t0, 1),
                     error=msg, failed_cell=e.exec_count)
        raise PipelineError(
            f"Notebook {notebook.name}{f' (init={step.init})' if step.init else ''} failed in cell "
            f"[{e.exec_count}]: {msg}\n"
            f"The partially executed notebook is kept at {_rel(executed, root)}.\n"
            f"Fix the cause, then continue with: glomlib run --resume {_rel(run_dir, root)}"
        ) from e
    except BaseException as e:
        state.update(step, status="failed", finished=_now(), seconds=round(time.monotonic() - t0, 1),
                     error=f"{type(e).__name__}: {e}")
        if isinstance(e, KeyboardInterrupt):
            raise
        raise PipelineError(
            f"Notebook {notebook.name}{f' (init={step.init})' if step.init else ''} could not be executed: "
            f"{type(e).__name__}: {e}\nWhatever was executed is kept at {_rel(executed, root)}; "
            f"continue with: glomlib run --resume {_rel(run_dir, root)}"
        ) from e
    state.update(step, status="completed", finished=_now(), seconds=round(time.monotonic() - t0, 1))


def write_summary(run_dir: Path, root: Path, definition: dict[str, Any], state: RunState) -> Path:
    """``summary.json``: headline metrics per init (from finetune/<init>/metrics.json) and the model per init."""
    metrics: dict[str, Any] = {}
    models: dict[str, str] = {}
    for init in definition["inits"]:
        d = run_dir / "finetune" / init
        mpath = d / "metrics.json"
        if mpath.is_file():
            try:
                m = json.loads(mpath.read_text())
                metrics[init] = m.get("summary", m)
            except json.JSONDecodeError:
                metrics[init] = {"error": f"unreadable {mpath.name}"}
        if (d / "model.safetensors").is_file():
            models[init] = _rel(d / "model.safetensors", root)
    summary = {
        "run": run_dir.name,
        "profile": definition["profile"]["name"],
        "data": definition["data"],
        "data_fingerprint": definition.get("data_fingerprint"),
        "status": {sid: s.get("status") for sid, s in state.data["steps"].items()},
        "metrics": metrics,
        "models": models,
        "paths_relative_to": "project root",
        "updated_utc": _now(),
    }
    return write_json_atomic(run_dir / "summary.json", summary)


def run_pipeline(profile: str | Path | None = None, *, data: str | None = None, ssl_data: str | None = None,
                 resume: str | Path | None = None,
                 only: list[str] | None = None, pseudonymise: bool = False, runs_root: str | Path = "runs",
                 reports_root: str | Path = "reports", notebooks_dir: str | Path | None = None,
                 project_root: str | Path | None = None, render: bool = True,
                 log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the pipeline; returns the run folder. Raises PipelineError/ConfigError with a clear message."""
    log = log or (lambda m: print(m, flush=True))
    root = Path(project_root).resolve() if project_root else find_project_root()

    if resume:
        run_dir = _abs(resume, root).resolve()
        if not (run_dir / "pipeline.json").is_file():
            raise PipelineError(f"{run_dir} is not a pipeline run folder (no pipeline.json); "
                                "give a folder made by 'glomlib run'.")
        definition = json.loads((run_dir / "pipeline.json").read_text())
        sweep_stale_temp(run_dir, recursive=True)  # temp files of killed steps
        if pseudonymise:
            refuse_real_identifiers(_rel(run_dir, root), definition)
        if profile is not None and load_run_profile(profile)["name"] != definition["profile"]["name"]:
            raise PipelineError(f"{_rel(run_dir, root)} was made with profile {definition['profile']['name']!r}; "
                                "--resume uses the run's own profile, drop --profile.")
        if data is not None and _rel(_abs(data, root), root) != definition["data_source"]:
            raise PipelineError(f"{_rel(run_dir, root)} was made with data {definition['data_source']!r}; "
                                "--resume uses the run's own data, drop --data.")
        nb_dir = _abs(definition["notebooks_dir"], root)
        prof = definition["profile"]
        steps = plan_steps(prof)
        nbs = notebook_paths(nb_dir)
        log(f"Resuming {_rel(run_dir, root)} (profile {prof['name']})")
    else:
        if profile is None:
            raise ConfigError("Give --profile NAME_OR_YAML (or --resume RUN_DIR).")
        prof = load_run_profile(profile)
        nb_dir = _abs(notebooks_dir, root) if notebooks_dir else root / "notebooks"
        nbs = notebook_paths(nb_dir)
        declared = {stem: notebook_parameters(p) for stem, p in nbs.items()}
        steps = plan_steps(prof)
        select_steps(steps, only)  # validate --only before creating anything
        positive = str(prof["common"].get("positive_label", ""))  # "": the data's dataset.json names it
        source = ensure_manifest(data, root)
        # validate profile against notebooks before creating a run folder
        step_parameters(prof, declared, "RUN", "DATA", external_rel="EXTERNAL" if prof.get("external") else None)
        ext_source = None
        if prof.get("external"):
            ext_source = _abs(str(prof["external"]), root)
            if not ext_source.is_file():
                raise PipelineError(f"profile {prof['name']!r}: external manifest {prof['external']} does not exist; "
                                    "give the path of a labelled manifest CSV (path, label, slide[, center]).")
        ssl_used = None
        if ssl_data:
            ssl_used = _abs(ssl_data, root)
            if not ssl_used.is_file():
                raise PipelineError(f"--ssl-data {ssl_data}: no such manifest.")
        run_dir = new_run_dir(_abs(runs_root, root), prof["name"]).resolve()
        log(f"Run folder: {_rel(run_dir, root)}")
        try:
            used = source
            if prof.get("subset"):
                used = write_subset_manifest(source, run_dir / "data" / "manifest.csv", prof["subset"], positive)
                log(f"  using a slice of the data ({prof['subset']}) -> {_rel(used, root)}")
            if pseudonymise:

                used = write_pseudonymised_manifest(used, run_dir / "data" / "manifest-pseudonymised.csv",
                                                    pseudonym_key(root), positive)
                log(f"  slide identifiers replaced by pseudonyms -> {_rel(used, root)}")
            ext_used = ext_source
            if ext_source is not None and pseudonymise:
                ext_used = write_pseudonymised_manifest(ext_source, run_dir / "data" / "external-pseudonymised.csv",
                                                        pseudonym_key(root), positive)
                log(f"  external slide identifiers replaced by pseudonyms -> {_rel(ext_used, root)}")
            log("  checking and fingerprinting the data ...")
            fingerprint = data_fingerprint(used, positive)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing ran: leave no half-made run folder
            raise
        params = step_parameters(prof, declared, _rel(run_dir, root), _rel(used, root),
                                 _rel(ssl_used, root) if ssl_used else None,
                                 external_rel=_rel(ext_used, root) if ext_used is not None else None)
        definition = {
            "profile": prof,
            "data": _rel(used, root),
            "data_source": _rel(source, root),
            "data_fingerprint": fingerprint,
            "ssl_data": _rel(ssl_used, root) if ssl_used else None,
            "notebooks_dir": _rel(nb_dir, root),
            "inits": prof["inits"],
            "steps": [{"id": s.id, "notebook": f"{s.stem}.ipynb", "out": s.out,
                       "executed": f"notebooks/{s.executed_name}"} for s in steps],
            "parameters": params,
            "pseudonymised_data": pseudonymise,
            "resumable": [stem for stem, d in declared.items() if "resume" in d],
            "created_utc": _now(),
        }
        write_json_atomic(run_dir / "pipeline.json", definition)
        shutil.copy2(resolve_profile_path(profile), run_dir / "profile.yaml")
        write_provenance(run_dir, config={"profile": prof, "data": definition["data"], "parameters": params},
                         data_fingerprint=fingerprint, extra={"pipeline": "glomlib run"})

    log = _tee(log, run_dir / "pipeline.log")
    log(f"--- {_now()} glomlib run {'--resume' if resume else '--profile ' + str(prof['name'])}"
        f"{' --only ' + ' '.join(only) if only else ''}")
    state = RunState(run_dir, steps)
    chosen = select_steps(steps, only)
    todo = [s for s in chosen if only or not (state.get(s).get("status") == "completed"
                                              and notebook_completed(run_dir / "notebooks" / s.executed_name))]
    for s in chosen:
        if s not in todo:
            log(f"  - {s.id}: completed earlier, skipped")
    t_start = time.monotonic()
    try:
        for i, step in enumerate(todo, 1):
            params = definition["parameters"][step.id]
            log(f"[{i}/{len(todo)}] {step.id} -> {_rel(run_dir / step.out, root)} ...")
            t0 = time.monotonic()
            try:
                execute_step(step, nbs[step.stem], params, run_dir, root, state, log,
                             resumable=step.stem in definition.get("resumable", []))
            except PipelineError as e:  # the CLI prints it; the run's log keeps it too
                with open(run_dir / "pipeline.log", "a", encoding="utf-8") as f:
                    f.write(f"FAILED: {e}\n")
                raise
            log(f"      done in {time.monotonic() - t0:.0f} s")
    finally:
        write_summary(run_dir, root, definition, state)
    log(f"All requested steps done in {time.monotonic() - t_start:.0f} s. Run folder: {_rel(run_dir, root)}")
    if only and resume:
        later = [s.id for s in steps if s not in chosen and steps.index(s) > steps.index(chosen[0])]
        if later:
            log(f"  note: later steps ({', '.join(later)}) were not re-run; add them to --only if they depend on it.")
    if render:

        index = render_run(run_dir, reports_root=_abs(reports_root, root),
                           pseudonymise=pseudonymise or bool(definition.get("pseudonymised_data")), project_root=root)
        log(f"Report: {_rel(index, root)}")
    return run_dir


# --------------------------------------------------------------------------------------------- CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run notebooks 01..05 with a profile and render HTML reports",
        description="Execute notebooks 01..05 with papermill into runs/<stamp>-<profile>/ and render "
                    "code-free HTML reports into reports/<run>/.",
    )
    p.add_argument("--profile", help=f"profile name ({', '.join(list_profiles()) or 'none yet'}) or a YAML file")
    p.add_argument("--data", help=f"manifest CSV (default {DEFAULT_DATA}, built from the shared mirror if missing)")
    p.add_argument("--ssl-data", metavar="MANIFEST",
                   help="a separate (e.g. unlabeled) manifest for SimCLR pretraining (02); default: --data")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run: skip steps that completed")
    p.add_argument("--only", nargs="+", metavar="STEP",
                   help="run only these steps (e.g. 01, ssl, 03/glom, finetune, 05_error_analysis); "
                        "with --resume, re-run them")
    p.add_argument("--pseudonymise", "--pseudonymize", action="store_true",
                   help="replace slide, patient and file names with stable pseudonyms where the data enters the run "
                        "(the notebooks get a manifest of pseudonym-named links, so no table, figure or log can show "
                        "a real identifier; the mapping stays in <run>/data/); the report goes to "
                        "reports/<run>-pseudonymised/. A run made without it cannot be pseudonymised afterwards.")
    p.add_argument("--runs-root", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--reports-root", default="reports", help="where HTML reports go (default: reports)")
    p.add_argument("--notebooks", default=None, help="folder holding the notebooks (default: notebooks)")
    p.add_argument("--no-report", action="store_true", help="do not render HTML reports")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    """Failures (PipelineError: a step failed or a run cannot go on; ConfigError; ManifestError...) become one
    message and a documented exit code in :func:`glomlib.cli.main`."""
    run_pipeline(args.profile, data=args.data, ssl_data=args.ssl_data, resume=args.resume, only=args.only,
                 pseudonymise=args.pseudonymise, runs_root=args.runs_root, reports_root=args.reports_root,
                 notebooks_dir=args.notebooks, render=not args.no_report)
    return 0
