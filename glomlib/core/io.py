"""Files that never lose anything: atomic writes through unique temp files, exclusive run-folder claims, provenance."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from glomlib.core.errors import ConfigError

TRACKED_PACKAGES = (
    "glomlib", "torch", "torchvision", "lightly", "timm", "numpy", "pandas", "scikit-learn",
    "opencv-python-headless", "grad-cam", "umap-learn", "papermill", "nbconvert", "safetensors",
)
TMP_MARK = ".glomlib-tmp-"   # every temp file glomlib writes carries this mark (see sweep_stale_temp)


# ------------------------------------------------------------------------------------------ atomic writes
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


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
        super().__init__(errno.ENOSPC, f"disk full while writing {path} ({where}); free some space or write "
                                       f"the output to another disk, then run again (nothing half-written "
                                       f"was left behind)")
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
LOW_SPACE = 16 * 1024 * 1024   # below this, a C++ writer's vague failure is taken to be a full disk


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
    taken = (f"{path} already exists; choose a new file name (outputs are never overwritten).")
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


# ---------------------------------------------------------------------------------------------- run folders
CLAIM_FILE = ".glomlib-claim"


def claim_dir(path: str | os.PathLike) -> Path:
    """Claim ``path`` as this run's output folder, exclusively: of two simultaneous claimants exactly one wins.

    The folder may exist only if it is empty; the claim is a file created with O_EXCL inside it. Raises
    FileExistsError naming the folder otherwise (runs are never overwritten)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    others = [p for p in path.iterdir() if p.name != CLAIM_FILE]
    if others:
        raise FileExistsError(
            f"{path} already exists and is not empty; choose a new output folder (runs are never overwritten).")
    try:
        fd = os.open(path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise FileExistsError(f"{path} is already claimed by another run{_claimant(path)}; choose a new output "
                              "folder.") from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": platform.node(),
                            "claimed_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}) + "\n")
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


def open_for_resume(path: str | os.PathLike, config: dict[str, Any], data_fingerprint: str | None, *,
                    free_fields: Iterable[str] = (), finished: Iterable[str] = (), command: str = "") -> Path:
    """Open an existing run folder to continue it, or refuse with :class:`ResumeError` listing every reason.

    Continues only an UNFINISHED run (none of the ``finished`` artefact names exist, ``run.json`` does not say
    finished) whose ``config.json`` equals ``config`` except for ``free_fields`` (device, workers, ...) and whose
    ``provenance.json`` records the same ``data_fingerprint``. Orphaned temp files of dead processes are swept.
    """
    path = Path(path)
    if not path.is_dir():
        raise ResumeError(f"resume: {path} does not exist; there is nothing to continue. Drop resume to start "
                          "a new run.")
    reasons: list[str] = []
    done = [n for n in finished if (path / n).exists()]
    st = read_run_status(path)
    status = st.get("status")
    if (status == "running" and st.get("host") == platform.node() and isinstance(st.get("pid"), int)
            and st["pid"] != os.getpid() and _pid_alive(st["pid"])):
        reasons.append(f"another process (pid {st['pid']}) is running it right now")
    if done or status == "finished":
        reasons.append(f"the run is finished ({', '.join(done) or 'run.json: finished'}); a finished run's "
                       "results are never replaced")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        reasons.append("it has no config.json, so it is not a run folder this step can continue")
    else:
        old = json.loads(cfg_file.read_text())
        free = set(free_fields)
        for k in sorted(set(old) | set(config)):
            if k in free:
                continue
            if _jsonable(old.get(k, "<absent>")) != _jsonable(config.get(k, "<absent>")):
                reasons.append(f"{k}: {old.get(k, '<absent>')!r} -> {config.get(k, '<absent>')!r}")
    prov = path / "provenance.json"
    if data_fingerprint is not None and prov.is_file():
        old_fp = json.loads(prov.read_text()).get("data_fingerprint")
        if old_fp != data_fingerprint:
            reasons.append(f"data fingerprint: {old_fp} -> {data_fingerprint} (the manifest or its images changed)")
    if reasons:
        again = f" ({command})" if command else ""
        raise ResumeError(f"cannot resume {path}:\n  - " + "\n  - ".join(reasons) + "\nStart a new run with "
                          f"another out folder{again}, or resume with exactly the run's data and settings "
                          f"(see {cfg_file}).")
    sweep_stale_temp(path, recursive=True)
    _note_active(path, resumed=True)
    return path


# ------------------------------------------------------------------------------------------- run status
RUN_STATUS = "run.json"
_ACTIVE: list[Path] = []   # run folders claimed/opened by this process inside a run_status block
_BLOCKS = [0]              # how many run_status blocks are open


def read_run_status(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / RUN_STATUS
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def mark_run(path: str | os.PathLike, status: str, **info: Any) -> Path:
    """Record a run's state (``running`` / ``failed`` / ``finished``) in ``<run>/run.json``."""
    rec = {**read_run_status(path), "status": status, **info,
           "updated_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
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
        for d in _ACTIVE[start:]:
            with contextlib.suppress(Exception):
                mark_run(d, "failed", step=step, error=f"{type(e).__name__}: {e}"[:2000],
                         what_now=f"fix the cause, then continue this run with: {resume_hint(d)} ; or start "
                                  "again with a new out folder (this one is kept as the record of the failure)")
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
    """' (process N, still running)' / ' (process N, no longer running: ...)' from a claim file, or ''."""
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
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
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


# --------------------------------------------------------------------------------------------- provenance
def software_versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in TRACKED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    torch = sys.modules.get("torch")  # reported when the step loaded it; never imported here (keeps data check light)
    if torch is not None:
        out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit of the project checkout (with '+dirty' if there are uncommitted changes)."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return None


def write_provenance(run_dir: str | os.PathLike, config: Any = None, data_fingerprint: str | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``provenance.json`` (config, versions, data fingerprint, git commit, time) into ``run_dir``."""
    run_dir = Path(run_dir)
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    record = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg,
        "data_fingerprint": data_fingerprint,
        "git_commit": git_commit(),
        "versions": software_versions(),
    }
    if extra:
        record.update(extra)
    return write_json_atomic(run_dir / "provenance.json", record)
