"""Files that never lose anything: atomic writes through unique temp files, exclusive run-folder claims, provenance."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def sweep_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Remove temp files left in ``folder`` by glomlib processes that no longer run; return what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TMP_MARK}*"):
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
        raise FileExistsError(f"{path} is already claimed by another run; choose a new output folder.") from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": platform.node(),
                            "claimed_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}) + "\n")
    return path


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
