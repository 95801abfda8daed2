"""Atomic writes through unique temp files: readers see the old or the new file, never a mix."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


TMP_MARK = ".glomlib-tmp-"  # every temp file glomlib writes carries this mark (see sweep_stale_temp)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o644, fsync: bool = False) -> Iterator[Path]:
    """Yield a unique temp path beside ``path``; on success it replaces ``path`` in one rename, on failure
    it is removed. Two writers never share a temp file; readers see the old or the new file, never a mix."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except Exception as e:
        if is_disk_full(e, path.parent):
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DiskFullError(path) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


class DiskFullError(OSError):
    """The disk filled up while writing; the message names the file and the free space left."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        free = free_space(path.parent)
        where = f"{_fmt_bytes(free)} free on that disk" if free is not None else "free space unknown"
        what = (
            "free some space or write the output to another disk, then run again (nothing half-written was left behind)"
        )
        super().__init__(errno.ENOSPC, f"disk full while writing {path} ({where}); {what}")
        self.path = path
        self.free_bytes = free


def free_space(folder: str | os.PathLike) -> int | None:
    """Bytes free on the disk holding ``folder`` (its nearest existing parent), or None."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


_CXX_WRITE_ERRORS = ("iostream error", "inline_container", "PytorchStreamWriter", "unexpected pos")
LOW_SPACE = 16 * 1024 * 1024  # below this, a C++ writer's vague failure is taken to be a full disk


def is_disk_full(e: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """True for "no space left on device" / quota errors, also when a C++ writer wraps them: torch.save on a
    full disk raises "basic_ios::clear: iostream error ... inline_container.cc", which counts as disk full when
    ``folder``'s disk has less than 16 MB free."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        if "No space left on device" in str(e):
            return True
        if folder is not None and any(m in str(e) for m in _CXX_WRITE_ERRORS):
            free = free_space(folder)
            if free is not None and free < LOW_SPACE:
                return True
        e = e.__cause__ or e.__context__
    return False


def _temp_beside(path: Path) -> Path:
    """A new, unique, empty temp file in ``path``'s folder, named so that sweep_stale_temp can find it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    return Path(tmp_name)


def publish_new(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Write a NEW file: ``writer(tmp)`` fills a unique temp file, which then appears at ``path`` in one step
    only if ``path`` does not exist yet (a hard link: create-exclusive). Of two processes publishing the same
    path at once exactly one wins; the other gets FileExistsError. Readers never see a partial file."""
    path = Path(path)
    taken = f"{path} already exists; choose a new file name (outputs are never overwritten)."
    if path.exists():
        raise FileExistsError(taken)
    tmp = _temp_beside(path)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(taken + " Another process wrote it first.") from None
        except OSError as e:  # file systems without hard links: claim the name exclusively, then move over it
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise FileExistsError(taken + " Another process wrote it first.") from None
            os.replace(tmp, path)
    except Exception as e:
        if is_disk_full(e, path.parent):
            raise DiskFullError(path) from e
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def write_csv_new(df: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """``df.to_csv`` into a NEW file (see :func:`publish_new`); FileExistsError if ``path`` exists."""
    to_csv.setdefault("index", False)
    return publish_new(path, lambda tmp: df.to_csv(tmp, **to_csv))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv_atomic(df: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """``df.to_csv`` (pandas) atomically; ``index=False`` unless given."""
    to_csv.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **to_csv)
    return Path(path)


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any], *, fsync: bool = False) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``torch.save``) and move the result to ``path`` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        writer(tmp)
    return Path(path)


def sweep_stale_temp(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove temp files left in ``folder`` (and its sub-folders with ``recursive``) by glomlib processes of
    this machine that no longer run; return what was removed. Temp files of live processes are kept."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in (folder.rglob if recursive else folder.glob)(f".*{TMP_MARK}*"):
        try:
            pid = int(p.name.split(TMP_MARK, 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
