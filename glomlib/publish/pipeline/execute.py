"""Executing one notebook with papermill: step state, earlier attempts kept aside, progress, the summary."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glomlib.core import progress, runs
from glomlib.core.io import read_run_status, utc_now, write_json_atomic
from glomlib.models.bundle import BUNDLE_FILE
from glomlib.publish.steps import PipelineError, Step, rel

KERNEL = "python3"
# the kernel logs errors only: its "running over TCP without encryption" warning means nothing to a user here
# (the kernel listens on localhost for this one papermill client)
KERNEL_ARGS = ["--log-level=ERROR"]


class RunState:
    """``state.json``: the status of every step, written atomically after every change."""

    def __init__(self, run_dir: Path, steps: list[Step] | None = None):
        self.path = run_dir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"steps": {}}
        for s in steps or []:
            entry = {"status": "pending", "notebook": f"notebooks/{s.executed_name}", "out": s.out}
            self.data["steps"].setdefault(s.id, entry)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def get(self, step: Step) -> dict[str, Any]:
        return self.data["steps"].setdefault(step.id, {"status": "pending"})

    def update(self, step: Step, **kw: Any) -> None:
        self.get(step).update(kw)
        self.save()

    def mark_all_stale(self) -> None:
        """Every step runs again (its earlier output is kept aside as ``*.previous-N``): the data changed."""
        for entry in self.data["steps"].values():
            entry["status"] = "stale"
        self.save()


def notebook_completed(path: Path) -> bool:
    """True when the executed notebook exists, papermill recorded no exception and every code cell ran."""
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
    code = [c for c in nb.cells if c.cell_type == "code"]
    statuses = [c.metadata.get("papermill", {}).get("status") for c in code]
    # an interrupted papermill marks the cells it never ran "completed": they have no execution count
    ran = all(c.get("execution_count") is not None for c in code if c.source.strip())
    return all(s in (None, "completed") for s in statuses) and bool(pm) and ran


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


@contextlib.contextmanager
def _streamed_progress(path: Path, log: Callable[[str], None]):
    """While a notebook runs, its steps append progress lines to ``path`` (``$GLOMLIB_PROGRESS_FILE``, inherited
    by the kernel) and a thread prints them to the terminal; the executed notebook, and so the report, gets none."""
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


def _kernel_manager(log_path: Path) -> type:
    """A kernel manager whose kernel writes its stderr to ``log_path``: when the run is interrupted, the kernel's
    shutdown noise (ZMQError tracebacks) stays in the run folder instead of the terminal."""
    from jupyter_client.manager import AsyncKernelManager

    class _KernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log_path, "ab") as f:  # the kernel keeps its own copy of the descriptor
                kw.setdefault("stderr", f)
                await super().start_kernel(**kw)

    return _KernelManager


def _quiet_after_interrupt() -> None:
    """An interrupted papermill leaves a dying kernel and pending tasks: say nothing more than the CLI's line."""
    import logging

    for name in ("papermill", "nbclient", "asyncio", "traitlets"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _keep_earlier(step: Step, executed: Path, run_dir: Path, root: Path, prev: Any, resumable: bool, log) -> bool:
    """Move an earlier attempt aside; True when a failed, resumable step continues in its output folder."""
    label = "failed" if prev in ("failed", "running") else "previous"
    out = run_dir / step.out
    # a step-run that finished (its run.json) but whose notebook did not: resuming it would be refused for good
    finished = runs_finished(out)
    continue_out = label == "failed" and resumable and out.is_dir() and not finished
    if finished and label == "failed":
        log(f"    {rel(out, root)} holds a finished run but its notebook was interrupted: the step runs again")
    if continue_out:
        log(f"    continuing the interrupted work in {rel(run_dir / step.out, root)} (resume=True)")
    kept = [_move_aside(executed, label), None if continue_out else _move_aside(run_dir / step.out, label)]
    kept = [rel(k, root) for k in kept if k]
    if kept:
        log(f"    kept the earlier attempt as {', '.join(kept)}")
    return continue_out


def runs_finished(out: Path) -> bool:
    return read_run_status(out).get("status") == "finished"


def _failure(step: Step, notebook: Path, e: BaseException, executed: Path, run_dir: Path, root: Path) -> str:
    from papermill.exceptions import PapermillExecutionError

    what = f"Notebook {notebook.name}{f' (init={step.init})' if step.init else ''}"
    again = f"glomlib run --resume {rel(run_dir, root)}"
    if isinstance(e, PapermillExecutionError):
        return (
            f"{what} failed in cell [{e.exec_count}]: {e.ename}: {e.evalue}\n"
            f"The partially executed notebook is kept at {rel(executed, root)}.\nFix the cause, then continue with: {again}"
        )
    return (
        f"{what} could not be executed: {type(e).__name__}: {e}\n"
        f"Whatever was executed is kept at {rel(executed, root)}; continue with: {again}"
    )


def execute_step(step, notebook, params, run_dir, root, state: RunState, log, resumable: bool = False) -> None:
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
        if _keep_earlier(step, executed, run_dir, root, prev, resumable, log):
            params["resume"] = True
    state.update(step, status="running", started=utc_now(), finished=None, error=None, parameters=params)
    t0 = time.monotonic()
    progress_log = run_dir / "progress" / f"{Path(step.executed_name).stem}.log"
    try:
        with _streamed_progress(progress_log, log):
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=params,
                kernel_name=KERNEL,
                cwd=str(root),
                progress_bar=sys.stderr.isatty(),
                log_output=False,
                request_save_on_cell_execute=True,
                extra_arguments=KERNEL_ARGS,
                kernel_manager_class=_kernel_manager(progress_log.with_suffix(".kernel.log")),
            )
    except BaseException as e:
        pm = isinstance(e, PapermillExecutionError)
        error = f"{e.ename}: {e.evalue}" if pm else f"{type(e).__name__}: {e}"
        extra = {"failed_cell": e.exec_count} if pm else {}
        state.update(
            step, status="failed", finished=utc_now(), seconds=round(time.monotonic() - t0, 1), error=error, **extra
        )
        if isinstance(e, KeyboardInterrupt):
            _quiet_after_interrupt()
            raise
        raise PipelineError(_failure(step, notebook, e, executed, run_dir, root)) from e
    state.update(step, status="completed", finished=utc_now(), seconds=round(time.monotonic() - t0, 1))


def _init_metrics(mpath: Path) -> tuple[dict[str, Any] | None, Any]:
    """(headline metrics, predicted/expected images per fold) of one fine-tune step; metrics covering less than
    their folds are refused (an error in their place, never a partial AUC)."""
    import pandas as pd

    from glomlib.core.coverage import CoverageError, fold_coverage

    if not mpath.is_file():
        return None, None
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError:
        return {"error": f"unreadable {mpath.name}"}, None
    pred, folds = mpath.parent / runs.PREDICTIONS, mpath.parent / runs.FOLDS
    if not (pred.is_file() and folds.is_file()):
        return m.get("summary", m), "not recorded (no predictions.csv and folds.csv)"
    try:
        coverage = fold_coverage(pd.read_csv(pred, keep_default_na=False), pd.read_csv(folds, keep_default_na=False))
    except CoverageError as e:
        return {"error": str(e)}, str(e)
    return m.get("summary", m), coverage


def write_summary(run_dir: Path, root: Path, definition: dict[str, Any], state: RunState) -> Path:
    """``summary.json``: headline metrics per init (from finetune/<init>/metrics.json, only when its predictions
    cover every fold: predicted / expected images per fold under ``coverage``), the model per init, and every
    step's status with the error of a failed one."""
    metrics: dict[str, Any] = {}
    coverage: dict[str, Any] = {}
    models: dict[str, str] = {}
    bundles: dict[str, str] = {}  # the model to use: the run's bundle (glomlib.models.bundle)
    for init, (mpath, model) in runs.finetune_outputs(run_dir, definition["inits"]).items():
        m, cov = _init_metrics(mpath)
        if m is not None:
            metrics[init], coverage[init] = m, cov
        if model.is_file():
            models[init] = rel(model, root)
        if (model.parent / BUNDLE_FILE).is_file():
            bundles[init] = rel(model.parent / BUNDLE_FILE, root)
    steps = state.data["steps"]
    summary = {
        "run": run_dir.name,
        "profile": definition["profile"]["name"],
        "data": definition["data"],
        "data_fingerprint": definition.get("data_fingerprint"),
        "status": {sid: s.get("status") for sid, s in steps.items()},
        "failed": {sid: s.get("error") for sid, s in steps.items() if s.get("status") == "failed"},
        "metrics": metrics,
        "coverage": coverage,
        "models": models,
        "bundles": bundles,
        "paths_relative_to": "project root",
        "updated_utc": utc_now(),
    }
    return write_json_atomic(run_dir / "summary.json", summary)
