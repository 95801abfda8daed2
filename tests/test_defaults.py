"""One source of defaults: every notebook's ``parameters`` cell holds exactly the fields of its step's config
dataclass, with the same default values; profiles set only parameters that exist; one name per concept."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from tyro._docstrings import get_field_docstring

import glomlib
from glomlib.core.config import PROFILES_DIR, StepConfig, field_defaults
from glomlib.evaluate.compare import CompareConfig
from glomlib.evaluate.predict import PredictConfig
from glomlib.evaluate.probe import ProbeConfig
from glomlib.publish.pipeline import notebook_parameters
from glomlib.review.audit import AuditConfig
from glomlib.review.explain import ExplainConfig
from glomlib.review.labels import ReviewConfig
from glomlib.train.finetune import FinetuneConfig
from glomlib.train.simclr import SSLConfig

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_CONFIG = {
    "01_data_audit": AuditConfig,
    "02_simclr_pretrain": SSLConfig,
    "03_finetune": FinetuneConfig,
    "04_baseline_comparison": CompareConfig,
    "05_error_analysis": ExplainConfig,
    "07_label_review": ReviewConfig,
}


def _all_configs() -> list[type[StepConfig]]:
    """Every StepConfig subclass in glomlib (each module imported), so a new step is checked too."""
    for m in pkgutil.walk_packages(glomlib.__path__, "glomlib."):
        importlib.import_module(m.name)
    found, todo = [], list(StepConfig.__subclasses__())
    while todo:
        c = todo.pop()
        if c.__module__.startswith("glomlib.") and c not in found:
            found.append(c)
        todo += c.__subclasses__()
    return sorted(found, key=lambda c: c.__name__)


ALL_CONFIGS = _all_configs()


def test_all_configs_found():
    assert {*NOTEBOOK_CONFIG.values(), ProbeConfig, PredictConfig} <= set(ALL_CONFIGS)


def _notebook_config(stem: str) -> type[StepConfig]:
    """The config class a notebook builds (``SomeConfig.from_namespace(globals())``)."""
    nb = nbformat.read(str(NB_DIR / f"{stem}.ipynb"), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    names = set(re.findall(r"\b(\w+Config)\.from_namespace\(", source))
    found = [c for c in ALL_CONFIGS if c.__name__ in names]
    assert len(found) == 1, f"{stem}.ipynb should build exactly one StepConfig with from_namespace; found {names}"
    return found[0]


NOTEBOOKS = sorted(p.stem for p in NB_DIR.glob("*.ipynb"))


def test_every_notebook_has_a_config():
    for stem in NOTEBOOKS:
        cls = _notebook_config(stem)
        assert NOTEBOOK_CONFIG.get(stem, cls) is cls


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_parameters_cell_equals_dataclass_defaults(stem):
    """Names and values: a field added to a config must be added to its notebook, with the same default."""
    cls = _notebook_config(stem)
    declared = notebook_parameters(NB_DIR / f"{stem}.ipynb")
    defaults = field_defaults(cls)
    missing = [k for k in defaults if k not in declared]
    extra = [k for k in declared if k not in defaults]
    assert not missing, f"{stem}.ipynb lacks parameters {missing} of {cls.__name__}; add them to its parameters cell"
    assert not extra, f"{stem}.ipynb declares {extra}, which {cls.__name__} has no field for"
    differ = {
        k: (declared[k], defaults[k])
        for k in defaults
        if declared[k] != defaults[k]
        or type(declared[k]) is not type(defaults[k])
        and not isinstance(defaults[k], float)
    }
    assert not differ, f"{stem}.ipynb vs {cls.__name__} defaults differ (notebook, dataclass): {differ}"


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_papermill_infers_the_same_parameters(stem):
    """papermill's own parser (what ``papermill -p`` and ``--help-notebook`` use) sees the same names."""
    seen = papermill.inspect_notebook(str(NB_DIR / f"{stem}.ipynb"))
    assert set(seen) == set(field_defaults(_notebook_config(stem)))


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_comment(cls):
    """The field comment is the CLI's help text (tyro reads it from the source)."""
    helps = {f.name: get_field_docstring(cls, f.name, ()) or "" for f in dataclasses.fields(cls)}
    assert set(helps) == {f.name for f in dataclasses.fields(cls)}
    blank = [k for k, v in helps.items() if not v]
    assert not blank, f"{cls.__name__}: fields {blank} have no trailing '# comment' (it is their --help text)"


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_one_name_per_concept(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert "n_folds" not in names, f"{cls.__name__}: call it 'folds'"
    assert "amp" not in names, f"{cls.__name__}: call it 'precision'"


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_positive_label_default_reads_the_dataset(cls):
    """Every step runs with its defaults on the default data: the positive label comes from dataset.json."""
    if "positive_label" in field_defaults(cls):
        assert field_defaults(cls)["positive_label"] == ""


@pytest.mark.parametrize("profile", sorted(PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_profiles_use_one_name_per_concept(profile):
    doc = yaml.safe_load(profile.read_text())
    keys = set(doc.get("common") or {})
    for params in (doc.get("steps") or {}).values():
        keys |= set(params or {})
    assert "n_folds" not in keys and "amp" not in keys, f"{profile.name}: use 'folds' / 'precision'"


def test_a_config_shows_itself_in_a_notebook_as_its_changed_settings():
    """03 and 06 end their set-up cell with `cfg`: the report shows the settings that differ from the defaults,
    not a one-line dataclass repr."""
    from glomlib.train.finetune import FinetuneConfig

    md = FinetuneConfig(init="imagenet", seeds=[0, 1])._repr_markdown_()
    assert "2 setting(s) differ" in md and "- `init` = `'imagenet'` (default `'glom'`)" in md
    assert "`seeds` = `[0, 1]` (default `[0]`)" in md and "epochs" not in md
    assert "every setting at its default" in FinetuneConfig()._repr_markdown_()
