"""Committed notebooks are clean and parameterised: no outputs or execution counts, a first code cell tagged
``parameters`` holding simple commented assignments that the step's config class knows, the project root
made the working directory right after it, and the parameters the pipeline passes."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest

from glomlib.publish.pipeline import PIPELINE_PARAMS

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
pytestmark = pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks committed yet")


def _ids(paths):
    return [p.name for p in paths]


def _read(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def _params(cell) -> dict[str, object]:
    tree = ast.parse(cell.source)
    out = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"parameters cell line {node.lineno}: only simple 'name = value' assignments are allowed"
        )
        value = ast.literal_eval(node.value)
        assert isinstance(value, (str, int, float, bool, list)), (
            f"parameter {node.targets[0].id}: use str/int/float/bool/list, not {type(value).__name__}"
        )
        out[node.targets[0].id] = value
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = _read(path)
    for i, cell in enumerate(_code_cells(nb)):
        assert not cell.get("outputs"), f"{path.name}: code cell {i} has outputs; clear them before committing"
        assert cell.get("execution_count") is None, f"{path.name}: code cell {i} has an execution count"
    assert "papermill" not in nb.metadata, f"{path.name}: looks like an executed (papermill) notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_first_code_cell_is_parameters_with_comments(path):
    nb = _read(path)
    cell = _parameters_cell(nb)
    assert _code_cells(nb)[0] is cell, f"{path.name}: the cell tagged 'parameters' must be the first code cell"
    params = _params(cell)
    assert {"data", "out"} <= set(params), f"{path.name}: every notebook has parameters data and out"
    for line in cell.source.splitlines():
        if re.match(r"^\s*[A-Za-z_]\w*\s*=", line):
            assert "#" in line, f"{path.name}: parameter line without a comment: {line!r}"
    nxt = _code_cells(nb)[1] if len(_code_cells(nb)) > 1 else None
    assert nxt is not None and "chdir_project_root" in nxt.source, (
        f"{path.name}: the first code cell after 'parameters' must call glomlib.core.paths.chdir_project_root()"
    )


PIPELINE_NOTEBOOKS = [p for p in NOTEBOOKS if p.stem in PIPELINE_PARAMS]  # 07 (label review) is not a pipeline step


def test_every_pipeline_step_has_a_notebook():
    assert {p.stem for p in PIPELINE_NOTEBOOKS} == set(PIPELINE_PARAMS)


@pytest.mark.parametrize("path", PIPELINE_NOTEBOOKS, ids=_ids(PIPELINE_NOTEBOOKS))
def test_pipeline_parameters_declared(path):
    stem = path.stem
    params = _params(_parameters_cell(_read(path)))
    missing = [p for p in PIPELINE_PARAMS[stem] if p not in params]
    assert not missing, f"{path.name}: the pipeline passes {missing}; declare them in the parameters cell"


def _config_class(nb):
    """The StepConfig subclass the notebook builds (``SomeConfig.from_namespace(...)``), if any."""
    source = "\n".join(c.source for c in _code_cells(nb))
    m = re.search(r"\b(\w+Config)\.from_(?:namespace|params)\(", source)
    if not m:
        return None
    name = m.group(1)
    import pkgutil

    import glomlib

    modules = sorted(i.name for i in pkgutil.walk_packages(glomlib.__path__, "glomlib."))
    for modname in modules:
        mod = importlib.import_module(modname)
        if isinstance(getattr(mod, name, None), type) and getattr(mod, name).__module__ == modname:
            return getattr(mod, name)
    raise AssertionError(f"notebook uses {name} but no glomlib module defines it")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_known_to_config_class(path):
    nb = _read(path)
    cls = _config_class(nb)
    if cls is None:
        pytest.skip(f"{path.name} builds no StepConfig")
    params = _params(_parameters_cell(nb))
    unknown = sorted(set(params) - set(cls.field_names()))
    assert not unknown, f"{path.name}: parameters {unknown} are not fields of {cls.__name__}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_papermill_sees_every_parameter(path):
    """`papermill --help-notebook` and papermill's unknown-parameter check use papermill's own parser, which
    skips a line whose comment contains '=' (e.g. ``out = "auto"  # "auto" = a new folder``)."""
    import papermill

    params = _params(_parameters_cell(_read(path)))
    seen = papermill.inspect_notebook(str(path))
    missing = [p for p in params if p not in seen]
    assert not missing, (
        f"{path.name}: papermill cannot parse the parameter line(s) of {missing}; "
        "avoid '=' inside their comments (write 'auto means ...', '0 turns it off')"
    )
