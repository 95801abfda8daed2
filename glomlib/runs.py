"""Run folders and provenance: every run gets its own folder, nothing overwrites an earlier run."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "glomlib", "torch", "torchvision", "lightly", "timm", "numpy", "pandas", "scikit-learn",
    "opencv-python-headless", "grad-cam", "umap-learn", "papermill", "nbconvert", "safetensors",
)


def new_run_dir(root: str | Path, name: str = "run") -> Path:
    """Create and return a fresh folder ``root/<UTC timestamp>-<name>``; never reuses an existing one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        suffix = "" if i == 0 else f"-{i}"
        d = root / f"{stamp}-{name}{suffix}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not create a new run folder under {root}")


def ensure_new_dir(path: str | Path) -> Path:
    """Create ``path`` if it does not exist; refuse if it exists and is non-empty (nothing is overwritten)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"{path} already exists and is not empty; choose a new output folder (runs are never overwritten)."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def software_versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in TRACKED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # torch missing is reported above
        pass
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the project checkout (with '+dirty' if there are uncommitted changes)."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return None


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_provenance(run_dir: str | Path, config: Any = None, data_fingerprint: str | None = None,
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
