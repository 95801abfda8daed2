"""Run folders: exclusive claims, resuming an unfinished run, its status in ``run.json``."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from glomlib.core.errors import ConfigError
from glomlib.core.io.atomic import _pid_alive, sweep_stale_temp, utc_now, write_json_atomic

CLAIM_FILE = ".glomlib-claim"


def claim_dir(path: str | os.PathLike) -> Path:
    """Claim ``path`` (empty or new) as this run's output folder with an O_EXCL file: of two claimants one wins."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    others = [p for p in path.iterdir() if p.name != CLAIM_FILE]
    if others:
        raise FileExistsError(
            f"{path} already exists and is not empty; choose a new output folder (runs are never overwritten)."
        )
    try:
        fd = os.open(path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise FileExistsError(
            f"{path} is already claimed by another run{_claimant(path)}; choose a new output folder."
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": platform.node(), "claimed_utc": utc_now()}) + "\n")
    _note_active(path)
    return path


def release_claim(path: str | os.PathLike) -> bool:
    """Give up a claim made by this process on a folder that is still empty (the step failed before writing
    anything), so that the same ``--out`` can be used again; True when the folder was removed."""
    path = Path(path)
    try:
        info = json.loads((path / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return False
    if info.get("pid") != os.getpid() or any(p.name != CLAIM_FILE for p in path.iterdir()):
        return False
    (path / CLAIM_FILE).unlink()
    path.rmdir()
    return True


class ResumeError(ConfigError):
    """A run folder cannot be continued (finished, other data or other settings); the message lists why."""


def _jsonable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _busy_or_done(path: Path, finished: Iterable[str]) -> list[str]:
    done = [n for n in finished if (path / n).exists()]
    st = read_run_status(path)
    pid, reasons = st.get("pid"), []
    mine = st.get("host") == platform.node() and isinstance(pid, int) and pid != os.getpid()
    if st.get("status") == "running" and mine and _pid_alive(pid):
        reasons.append(f"another process (pid {pid}) is running it right now")
    if done or st.get("status") == "finished":
        what = ", ".join(done) or "run.json: finished"
        reasons.append(f"the run is finished ({what}); a finished run's results are never replaced")
    return reasons


def _changed(path: Path, config: dict[str, Any], data_fingerprint: str | None, free: set[str]) -> list[str]:
    cfg_file, prov, reasons = path / "config.json", path / "provenance.json", []
    if not cfg_file.is_file():
        reasons.append("it has no config.json, so it is not a run folder this step can continue")
    else:
        old = json.loads(cfg_file.read_text())
        for k in sorted((set(old) | set(config)) - free):
            a, b = old.get(k, "<absent>"), config.get(k, "<absent>")
            if _jsonable(a) != _jsonable(b):
                reasons.append(f"{k}: {a!r} -> {b!r}")
    if data_fingerprint is not None and prov.is_file():
        old_fp = json.loads(prov.read_text()).get("data_fingerprint")
        if old_fp != data_fingerprint:
            reasons.append(f"data fingerprint: {old_fp} -> {data_fingerprint} (the manifest or its images changed)")
    return reasons


def open_for_resume(
    path: str | os.PathLike,
    config: dict[str, Any],
    data_fingerprint: str | None,
    *,
    free_fields: Iterable[str] = (),
    finished: Iterable[str] = (),
    command: str = "",
) -> Path:
    """Open an existing run folder to continue it, or refuse with :class:`ResumeError` listing every reason.

    Continues only an UNFINISHED run (none of the ``finished`` artefact names exist, ``run.json`` does not say
    finished) whose ``config.json`` equals ``config`` except for ``free_fields`` (device, workers, ...) and whose
    ``provenance.json`` records the same ``data_fingerprint``. Orphaned temp files of dead processes are swept.
    """
    path = Path(path)
    if not path.is_dir():
        raise ResumeError(
            f"resume: {path} does not exist; there is nothing to continue. Drop resume to start a new run."
        )
    reasons = _busy_or_done(path, finished) + _changed(path, config, data_fingerprint, set(free_fields))
    if reasons:
        again = f" ({command})" if command else ""
        raise ResumeError(
            f"cannot resume {path}:\n  - " + "\n  - ".join(reasons) + "\nStart a new run with "
            f"another out folder{again}, or resume with exactly the run's data and settings "
            f"(see {path / 'config.json'})."
        )
    sweep_stale_temp(path, recursive=True)
    _note_active(path, resumed=True)
    return path


RUN_STATUS = "run.json"
_ACTIVE: list[Path] = []  # run folders claimed/opened by this process inside a run_status block
_BLOCKS = [0]  # how many run_status blocks are open


def read_run_status(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / RUN_STATUS).read_text())
    except (OSError, ValueError):
        return {}


def mark_run(path: str | os.PathLike, status: str, **info: Any) -> Path:
    """Record a run's state (``running`` / ``failed`` / ``finished``) in ``<run>/run.json``."""
    rec = {**read_run_status(path), "status": status, **info, "updated_utc": utc_now()}
    if status != "failed":
        rec.pop("error", None)
        rec.pop("what_now", None)
    return write_json_atomic(Path(path) / RUN_STATUS, rec)


@contextlib.contextmanager
def run_status(step: str, resume_hint: Callable[[Path], str]) -> Iterator[list[Path]]:
    """Mark every run folder that the block claims (or opens to resume) ``running``, then ``finished`` or,
    when the block raises, ``failed`` with the error and how to resume or start again."""
    start = len(_ACTIVE)
    _BLOCKS[0] += 1
    try:
        yield _ACTIVE
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"[:2000]
        again = "; or start again with a new out folder (this one is kept as the record of the failure)"
        for d in _ACTIVE[start:]:
            with contextlib.suppress(Exception):
                mark_run(
                    d,
                    "failed",
                    step=step,
                    error=error,
                    what_now=f"fix the cause, then continue this run with: {resume_hint(d)} {again}",
                )
        raise
    else:
        for d in _ACTIVE[start:]:
            with contextlib.suppress(Exception):
                mark_run(d, "finished", step=step)
    finally:
        _BLOCKS[0] -= 1
        del _ACTIVE[start:]


def track_run(path: str | os.PathLike) -> None:
    """Let the enclosing :func:`run_status` block record ``path`` (a folder claimed before the block began)."""
    _note_active(Path(path))


def _note_active(path: Path, resumed: bool = False) -> None:
    if not _BLOCKS[0] or path in _ACTIVE:
        return
    _ACTIVE.append(path)
    with contextlib.suppress(Exception):
        mark_run(path, "running", pid=os.getpid(), host=platform.node(), resumed=resumed)


def _claimant(path: Path) -> str:
    try:
        info = json.loads((path / CLAIM_FILE).read_text())
        pid, host = int(info["pid"]), info.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if host != platform.node():
        return f" (process {pid} on {host})"
    if _pid_alive(pid):
        return f" (process {pid}, still running)"
    return f" (process {pid}, which no longer runs: the folder holds an aborted run)"


def new_run_dir(root: str | os.PathLike, name: str = "run") -> Path:
    """Create and claim a fresh folder ``root/<UTC timestamp>-<name>``; never reuses an existing one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        d = root / (f"{stamp}-{name}" + ("" if i == 0 else f"-{i}"))
        try:
            d.mkdir()
        except FileExistsError:
            continue
        return claim_dir(d)
    raise RuntimeError(f"Could not create a new run folder under {root}")


def ensure_new_dir(path: str | os.PathLike) -> Path:
    """Create and claim ``path``; refuse if it holds anything (nothing is overwritten)."""
    return claim_dir(path)
