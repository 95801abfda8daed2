"""glomlib.core.paths: the project root is found from any sub-folder, $GLOMLIB_ROOT wins, notebooks chdir to it."""

from __future__ import annotations

import os
from pathlib import Path

from glomlib.core import paths

REPO = Path(__file__).resolve().parents[1]


def test_project_root_found_from_a_subfolder(monkeypatch):
    monkeypatch.delenv("GLOMLIB_ROOT", raising=False)
    assert paths.project_root(REPO / "glomlib" / "core") == REPO
    monkeypatch.chdir(REPO / "notebooks")
    assert paths.project_root() == REPO


def test_other_projects_pyproject_is_not_ours(tmp_path, monkeypatch):
    monkeypatch.delenv("GLOMLIB_ROOT", raising=False)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert paths.project_root(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()  # falls back to start
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "glomlib"\n')
    assert paths.project_root(tmp_path / "a" / "b") == tmp_path.resolve()


def test_env_overrides_and_chdir(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOMLIB_ROOT", str(tmp_path))
    assert paths.project_root(REPO) == tmp_path.resolve()
    monkeypatch.chdir(REPO)
    assert paths.chdir_project_root() == tmp_path.resolve()
    assert Path(os.getcwd()).resolve() == tmp_path.resolve()


def test_shared_data_dir_is_beside_the_checkout(monkeypatch):
    monkeypatch.delenv("GLOMLIB_ROOT", raising=False)
    monkeypatch.chdir(REPO)
    assert paths.shared_data_dir() == REPO.parent / "shared" / "data"
    assert paths.DEFAULT_RUNS_ROOT == Path("runs") and paths.DEFAULT_DATA_ROOT == Path("data")
