"""The ``glomlib`` command: one ``--name value`` convention generated from each step's config dataclass, and
``ssl`` / ``finetune`` / ``probe`` / ``predict`` running end to end with only size/epoch overrides on data laid
out like the default (``data/glomeruli-pas/manifest.csv`` + its ``dataset.json``)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import build_tiny_dataset
from tyro._docstrings import get_field_docstring

from glomlib import cli
from glomlib.core.config import ConfigError, field_defaults

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    "ssl": "glomlib.train.simclr:SSLConfig",
    "finetune": "glomlib.train.finetune:FinetuneConfig",
    "probe": "glomlib.evaluate.probe:ProbeConfig",
    "predict": "glomlib.evaluate.predict:PredictConfig",
}


def _config(step: str):
    module, name = STEPS[step].split(":")
    return getattr(importlib.import_module(module), name)


def _help_text(out: str) -> str:
    """tyro's help without its box drawing, whitespace collapsed (lines wrap inside the box)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", out).split())


@pytest.mark.parametrize("step", sorted(STEPS))
def test_step_help_lists_every_parameter_with_default_and_comment(step, capsys):
    cls = _config(step)
    with pytest.raises(SystemExit) as e:
        cli.main([step, "--help"])
    assert e.value.code == 0
    text = _help_text(capsys.readouterr().out)
    for f in dataclasses.fields(cls):
        assert f"--{f.name.replace('_', '-')}" in text, f"glomlib {step} --help lacks --{f.name}"
        first_words = " ".join(get_field_docstring(cls, f.name, ()).split()[:3])
        assert first_words in text, f"glomlib {step} --help lacks the comment of {f.name}"
    for value in field_defaults(cls).values():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert f"default: {value}" in text


def test_simclr_module_entry_point_has_the_same_options():
    """torchrun launches ``python -m glomlib.train.simclr`` with the flags of ``glomlib ssl``."""
    from glomlib.train.simclr import SSLConfig

    r = subprocess.run(
        [sys.executable, "-m", "glomlib.train.simclr", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    for f in dataclasses.fields(SSLConfig):
        assert f"--{f.name.replace('_', '-')}" in r.stdout


def test_predict_requires_its_paths(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", "--out", "x.csv"])
    assert e.value.code == 2 and "--model" in capsys.readouterr().err
    with pytest.raises(TypeError):
        _config("predict")()  # no defaults for model / manifest / out


def test_bad_value_is_a_usage_error(capsys):
    from glomlib.train.finetune import FinetuneConfig

    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", "--init", "random"])
    assert e.value.code == 2
    assert "random" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        FinetuneConfig.from_params(init="random")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder whose default data (data/glomeruli-pas/manifest.csv + dataset.json naming GS) is a tiny
    generated dataset: 8 slides x 8 images (64: one SimCLR batch of the default size), 32 px."""
    root = tmp_path_factory.mktemp("project")
    build_tiny_dataset(root / "data" / "glomeruli-pas", n_slides=8, per_slide=8, size=32, labels=("GS", "nonGS"))
    return root


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("GLOMLIB_ROOT", str(project))
    return project


def _newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"no {pattern} under {root}"
    return found[-1]


@pytest.mark.slow
def test_steps_run_with_only_size_and_epoch_overrides(in_project, capsys):
    """`glomlib data fetch` layout + defaults: every step runs; the positive label comes from dataset.json."""
    assert cli.main(["ssl", "--image-size", "32", "--epochs", "1", "--progress", "false"]) == 0
    ssl_run = _newest(in_project / "runs", "*-ssl")
    assert (ssl_run / "encoder.safetensors").is_file()
    hist = pd.read_csv(ssl_run / "history.csv")
    assert len(hist) == 1 and hist["lr"].iloc[0] < _config("ssl").lr  # warm-up clamped: the lr already decays
    assert json.loads((ssl_run / "config.json").read_text())["positive_label"] == ""

    assert (
        cli.main(
            [
                "finetune",
                "--init",
                "imagenet",
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--folds",
                "2",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    ft_run = _newest(in_project / "runs", "*-finetune-imagenet")
    metrics = json.loads((ft_run / "metrics.json").read_text())
    assert metrics["positive_label"] == "GS" and metrics["negative_label"] == "nonGS" and metrics["folds"] == 2

    capsys.readouterr()
    out_json = in_project / "probe.json"
    assert cli.main(["probe", "--image-size", "32", "--folds", "2", "--out", str(out_json)]) == 0
    probe = json.loads(out_json.read_text())
    assert probe["positive_label"] == "GS" and probe["n"] == 64 and probe["init"] == "imagenet"

    pred_csv = in_project / "p.csv"
    assert (
        cli.main(
            [
                "predict",
                "--model",
                str(ft_run / "model.safetensors"),
                "--manifest",
                "data/glomeruli-pas/manifest.csv",
                "--out",
                str(pred_csv),
            ]
        )
        == 0
    )
    pred = pd.read_csv(pred_csv)
    assert len(pred) == 64 and set(pred["pred_label"]) <= {"GS", "nonGS"} and pred["prob"].between(0, 1).all()


def test_missing_dataset_json_is_a_clear_data_error(tmp_path, capsys):
    m = build_tiny_dataset(tmp_path / "d", labels=("GS", "nonGS"), sidecar=False)
    rc = cli.main(
        ["probe", "--data", str(m), "--image-size", "16", "--folds", "2", "--backbone", "resnet18", "--init", "scratch"]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "labels found: GS (12), nonGS (12)" in err or "labels found: nonGS (12), GS (12)" in err
    assert "positive_label" in err and "dataset.json" in err
