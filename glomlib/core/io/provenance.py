"""``provenance.json``: config, software versions, data fingerprint, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from glomlib.core.io.atomic import utc_now, write_json_atomic

TRACKED_PACKAGES = tuple(
    "glomlib torch torchvision lightly timm numpy pandas scikit-learn opencv-python-headless grad-cam umap-learn "
    "papermill nbconvert safetensors".split()
)


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
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except Exception:
        return None


def write_provenance(
    run_dir: str | os.PathLike,
    config: Any = None,
    data_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``provenance.json`` (config, versions, data fingerprint, git commit, time) into ``run_dir``."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    record = {"created_utc": utc_now(), "config": cfg, "data_fingerprint": data_fingerprint}
    record |= {"git_commit": git_commit(), "versions": software_versions(), **(extra or {})}
    return write_json_atomic(Path(run_dir) / "provenance.json", record)
