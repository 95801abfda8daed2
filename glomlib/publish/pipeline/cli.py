"""``glomlib run``: its config (the command-line options) and the command."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from glomlib.core.config import StepConfig
from glomlib.publish.pipeline.run import run_pipeline


@dataclasses.dataclass(frozen=True)
class RunConfig(StepConfig):
    """Execute notebooks 01..05 with papermill into runs/<stamp>-<profile>/ and render code-free HTML reports
    into reports/<run>/."""

    profile: str | None = None  # profile name (glomlib/profiles/*.yaml) or a YAML file
    data: str | None = None  # manifest CSV (default: the shared mirror's manifest, built if missing)
    ssl_data: str | None = None  # a separate (e.g. unlabeled) manifest for SimCLR pretraining (02); default: data
    resume: str | None = None  # RUN_DIR: continue a run (skip completed steps); refused if anything differs
    only: list[str] = dataclasses.field(default_factory=list)  # steps to run, e.g. 01,ssl,03/glom (re-run on resume)
    pseudonymise: Annotated[bool, tyro.conf.arg(aliases=("--pseudonymize",))] = False  # pseudonyms for a NEW run
    runs_root: str = "runs"  # where run folders go
    reports_root: str = "reports"  # where HTML reports go
    notebooks: str | None = None  # folder holding the notebooks (default: notebooks)
    no_report: bool = False  # do not render HTML reports
    accept_changes: bool = False  # resume although data/settings/code changed: recorded; new data re-runs all steps


def cli_run(cfg: RunConfig) -> int:
    """Failures (PipelineError: a step failed or a run cannot go on; ConfigError; ResumeError...) become one
    message and a documented exit code in :func:`glomlib.cli.main`."""
    run_pipeline(
        cfg.profile,
        data=cfg.data,
        ssl_data=cfg.ssl_data,
        resume=cfg.resume,
        only=cfg.only or None,
        pseudonymise=cfg.pseudonymise,
        runs_root=cfg.runs_root,
        reports_root=cfg.reports_root,
        notebooks_dir=cfg.notebooks,
        render=not cfg.no_report,
        accept_changes=cfg.accept_changes,
    )
    return 0
