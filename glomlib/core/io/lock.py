"""One lock per run folder, held for the whole process that writes it: a second writer is refused at start."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glomlib.core.io.atomic import _pid_alive, utc_now
from glomlib.core.io.claims import ResumeError

LOCK_FILE = ".glomlib-lock"


class RunLockedError(ResumeError):
    """Another live process holds the run folder's lock."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start tick of ``pid`` (tells a reused pid from the lock's owner), or None off Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(info: dict[str, Any]) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    tick = info.get("proc_start")
    return tick is None or _proc_start(pid) in (None, tick)


def _describe(info: dict[str, Any]) -> str:
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started_utc')}"


def acquire_lock(run_dir: str | os.PathLike) -> tuple[Path, str | None]:
    """Take ``run_dir``'s lock -> (lock file, a note naming the stale lock it replaced, or None).

    A lock of a live process (on this host) or of another host is refused with :class:`RunLockedError`; the lock
    of a process that no longer runs (killed, machine restarted) is stale: it is replaced and named."""
    lock = Path(run_dir) / LOCK_FILE
    mine = {
        "pid": os.getpid(),
        "host": platform.node(),
        "started_utc": utc_now(),
        "proc_start": _proc_start(os.getpid()),
    }
    note = None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _holder(lock)
            if info.get("host") not in (None, platform.node()):
                raise RunLockedError(
                    f"{run_dir} is locked by {_describe(info)}: another machine is writing this run. Wait for it, "
                    f"or, if that process is gone, delete {lock} and run again."
                ) from None
            if _alive(info):
                raise RunLockedError(
                    f"{run_dir} is being written by another process ({_describe(info)}); a second writer is "
                    "refused. Wait until it finishes (or stop it), then resume; or start a new run."
                ) from None
            note = f"replaced a stale lock ({_describe(info) if info else 'unreadable'}; that process no longer runs)"
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine) + "\n")
        return lock, note
    raise RunLockedError(f"{run_dir}: could not take its lock {lock} (another process keeps taking it).")


def release_lock(lock: Path) -> None:
    """Remove ``lock`` when this process holds it."""
    if _holder(lock).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[str | None]:
    """Hold ``run_dir``'s lock for the block; yields the stale-lock note (or None)."""
    lock, note = acquire_lock(run_dir)
    try:
        yield note
    finally:
        release_lock(lock)
