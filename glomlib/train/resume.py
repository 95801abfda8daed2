"""Which outputs mark a training run as finished when it is asked to resume."""

from __future__ import annotations

from pathlib import Path

from glomlib.core import io


def finished_outputs(run_dir: str | Path, outputs: tuple[str, ...]) -> tuple[str, ...]:
    """``outputs`` (the files a finished run holds), or none when ``run.json`` says the run is still running or
    failed: an interrupt right after the last output was written, before the run was marked finished, leaves a
    run that resuming completes (it skips what exists) instead of one refused as finished."""
    return () if io.read_run_status(run_dir).get("status") in ("running", "failed") else outputs
