"""What every notebook declares in its ``parameters`` cell, and what the pipeline gives each step."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from glomlib.core import runs
from glomlib.core.config import ConfigError, parse_bool
from glomlib.models.bundle import BUNDLE_FILE
from glomlib.publish.pipeline.profiles import errors_init
from glomlib.publish.steps import (
    OPTIONAL_PIPELINE_PARAMS,
    OPTIONAL_STEMS,
    PIPELINE_PARAMS,
    STEMS,
    PipelineError,
    Step,
    plan_steps,
)


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


def _assignments(source: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    try:
                        params[t.id] = ast.literal_eval(node.value) if node.value is not None else None
                    except ValueError:
                        params[t.id] = ast.unparse(node.value)
    return params


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its cell tagged ``parameters`` (name -> default).

    Parsed with ``ast`` (papermill's parser skips a line whose comment contains ``=``); papermill's
    ``inspect_notebook`` is the fallback for cells ``ast`` cannot parse."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise PipelineError(
            f"Notebook {path.name} has no cell tagged 'parameters'; tag its first code cell "
            "'parameters' (papermill puts the given values right after it)."
        )
    try:
        params = _assignments(cells[0].source)
    except SyntaxError:
        import papermill

        params = {k: v.get("default") for k, v in papermill.inspect_notebook(str(path)).items()}
    if not params:
        raise PipelineError(f"Notebook {path.name}: its 'parameters' cell holds no assignments.")
    return params


def _owned_by() -> dict[str, set[str]]:
    """Per notebook, the parameters the pipeline sets itself (a profile may not set them)."""
    return {stem: set(PIPELINE_PARAMS[stem]) | set(OPTIONAL_PIPELINE_PARAMS.get(stem, ())) for stem in STEMS}


def _notebook_problems(profile: dict[str, Any], declared: dict[str, dict[str, Any]]) -> list[str]:
    errors = []
    if profile.get("external") and "06_external_validation" not in declared:
        errors.append("the profile names an external manifest but notebooks/06_external_validation.ipynb is missing")
    for stem, owned in PIPELINE_PARAMS.items():
        if stem not in declared and stem in OPTIONAL_STEMS:
            continue
        missing = [k for k in owned if k not in declared[stem]]
        if missing:
            errors.append(
                f"notebook {stem}.ipynb does not declare the pipeline parameter(s) {missing} in its "
                f"'parameters' cell (declared: {sorted(declared[stem])})"
            )
    return errors


def _common_problems(profile: dict[str, Any], declared: dict[str, dict[str, Any]]) -> list[str]:
    errors, owned_by = [], _owned_by()
    for key in profile["common"]:
        if any(key in owned for owned in owned_by.values()):
            errors.append(f"common.{key} is set by the pipeline; remove it from the profile (use --data for data)")
        elif not any(key in d for d in declared.values()):
            listed = ", ".join(f"{s}: {sorted(d)}" for s, d in declared.items())
            errors.append(f"common.{key} is not a parameter of any notebook ({listed})")
    return errors


def _per_init_problems(profile: dict[str, Any], declared: dict[str, Any], value: Any) -> list[str]:
    if not isinstance(value, dict) or set(value) - set(profile["inits"]):
        return [f"steps.03_finetune.per_init must map inits {profile['inits']} to parameters"]
    owned = _owned_by()["03_finetune"]
    return [
        f"steps.03_finetune.per_init.{init}.{k}: not a settable parameter of "
        f"notebook 03_finetune.ipynb (declared: {sorted(declared)})"
        for init, extra in value.items()
        for k in extra or {}
        if k in owned or k not in declared
    ]


def _step_problems(profile: dict[str, Any], declared: dict[str, dict[str, Any]]) -> list[str]:
    errors, owned_by = [], _owned_by()
    for stem, params in profile["steps"].items():
        for key, value in params.items():
            if key == "per_init" and stem == "03_finetune":
                errors += _per_init_problems(profile, declared[stem], value)
            elif key in owned_by[stem]:
                errors.append(f"steps.{stem}.{key} is set by the pipeline; remove it from the profile")
            elif key not in declared[stem]:
                errors.append(
                    f"steps.{stem}.{key}: notebook {stem}.ipynb has no parameter {key!r} "
                    f"(its parameters: {sorted(declared[stem])})"
                )
    return errors


def _pipeline_owned(step: Step, profile: dict[str, Any], d: dict[str, Any], run: str) -> dict[str, Any]:
    """The parameters that chain step ``step`` to the steps before it."""
    p: dict[str, Any] = {}
    if step.stem == "03_finetune":
        p = {"init": step.init, "ssl_checkpoint": runs.ssl_encoder(run)}
        p.update((profile["steps"].get(step.stem, {}).get("per_init") or {}).get(step.init) or {})
    elif step.stem == "04_baseline_comparison":
        p["runs"] = runs.finetune_dir(run)
        if "inits" in d:
            p["inits"] = list(profile["inits"])
        if "ssl_checkpoint" in d:
            p["ssl_checkpoint"] = runs.ssl_encoder(run)
    elif step.stem == "05_error_analysis":
        p["run"] = runs.finetune_dir(run, errors_init(profile))
    elif step.stem == "06_external_validation":  # the shipped model: the bundle (final models)
        init, ft = errors_init(profile), profile["steps"].get("03_finetune", {})
        ft = {**profile["common"], **ft, **((ft.get("per_init") or {}).get(init) or {})}
        name = BUNDLE_FILE if parse_bool(ft.get("final_model", True)) else runs.MODEL  # no final model: no bundle
        p["model"] = f"{runs.finetune_dir(run, init)}/{name}"
    return p


def step_parameters(
    profile: dict[str, Any],
    declared: dict[str, dict[str, Any]],
    run_rel: str,
    data_rel: str,
    ssl_data_rel: str | None = None,
    external_rel: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Parameters for every step id. ``declared``: notebook stem -> its declared parameters.

    Raises ConfigError naming the key and notebook for a profile key no notebook declares, a step key its
    notebook does not declare, a pipeline-owned key set in a profile, or a pipeline parameter a notebook lacks."""
    errors = _notebook_problems(profile, declared) + _common_problems(profile, declared)
    errors += _step_problems(profile, declared)
    if errors:
        raise ConfigError(f"Profile {profile.get('name', '?')!r}:\n  - " + "\n  - ".join(errors))
    out: dict[str, dict[str, Any]] = {}
    for step in plan_steps(profile):
        d = declared[step.stem]
        p = {k: v for k, v in profile["common"].items() if k in d}
        p.update({k: v for k, v in profile["steps"].get(step.stem, {}).items() if k != "per_init"})
        if "data" in d:
            p["data"] = ssl_data_rel if (ssl_data_rel and step.stem == "02_simclr_pretrain") else data_rel
        p["out"] = f"{run_rel}/{step.out}"
        p.update(_pipeline_owned(step, profile, d, run_rel))
        if step.stem == "06_external_validation":
            p["manifest"] = external_rel or str(profile.get("external"))
        out[step.id] = p
    return out
