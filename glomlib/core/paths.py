"""Where things live: the project root, default data/runs/reports folders, the shared data mirror.

Relative paths in configs and notebook parameters are relative to the project root, so a notebook behaves
the same whether JupyterLab starts it in ``notebooks/`` or papermill runs it from the root."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_ROOT = Path("data")
DEFAULT_RUNS_ROOT = Path("runs")
DEFAULT_REPORTS_ROOT = Path("reports")
DEFAULT_MANIFEST = DEFAULT_DATA_ROOT / "glomeruli-pas" / "manifest.csv"  # the one default manifest path


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding glomlib's pyproject.toml; else cwd.

    ``$GLOMLIB_ROOT`` overrides the search.
    """
    env = os.environ.get("GLOMLIB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        pp = d / "pyproject.toml"
        if pp.is_file() and 'name = "glomlib"' in pp.read_text(errors="ignore"):
            return d
    return here


def chdir_project_root() -> Path:
    """Make the project root the working directory (first code cell of every notebook) and return it."""
    root = project_root()
    os.chdir(root)
    return root


def shared_data_dir() -> Path:
    """``../shared/data`` beside the project checkout (the development mirror), may not exist."""
    return project_root().parent / "shared" / "data"
