"""glomlib.evaluate.compare and notebook 04: collect runs, table, paired tests, label efficiency, figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from glomlib.evaluate import compare
from glomlib.evaluate.compare import CompareConfig
from glomlib.train.finetune import run_finetune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny finished runs laid out as <runs>/<init>/ (what the pipeline writes)."""
    from conftest import build_tiny_dataset

    root = tmp_path_factory.mktemp("cmp")
    manifest = build_tiny_dataset(root / "data", n_slides=8, per_slide=4, size=16)
    runs = root / "finetune"
    common = dict(data=str(manifest), backbone="resnet18", image_size=16, epochs=1, batch_size=8, folds=2,
                  positive_label="M1", progress=False, final_model=False)
    for init in ("scratch", "imagenet"):
        # "imagenet" stand-in: a second scratch run with another lr, written under imagenet/ (no weights needed)
        run_finetune(init="scratch", out=str(runs / init), lr=1e-3 if init == "scratch" else 3e-3, **common)
    return manifest, runs, common


def test_collect_table_and_pairwise(setup):
    manifest, runs, _ = setup
    found = compare.collect_runs(runs, inits=("glom", "imagenet", "scratch"))
    assert list(found) == ["imagenet", "scratch"]
    table = compare.comparison_table(found)
    assert list(table.index) == ["imagenet", "scratch"]
    assert table.loc["scratch", "AUC"].count("±") == 1
    ref = compare.comparison_table(found, reference=True)
    assert "scratch (study, M1 vs M0)" in ref.index
    oof = compare.paired_oof(found)
    assert len(oof) == 32 and {"imagenet", "scratch", "y", "slide"} <= set(oof.columns)
    pw = compare.pairwise_tests(found, n_boot=50)
    assert len(pw) == 1 and 0 <= pw.loc[0, "delong_p"] <= 1


def test_run_missing_false_is_an_error(setup, tmp_path):
    manifest, runs, _ = setup
    cfg = CompareConfig.from_params(runs=str(runs), out=str(tmp_path / "o"), inits=["glom", "scratch"],
                                    run_missing=False)
    with pytest.raises(FileNotFoundError, match="glom"):
        compare.run_or_collect(cfg, compare.prepare_out(cfg))


def test_label_efficiency_runs_missing_fractions(setup, tmp_path):
    manifest, runs, common = setup
    cfg = CompareConfig.from_params(runs=str(runs), out=str(tmp_path / "le"), inits="scratch", data=str(manifest),
                                    fractions="[0.5, 1.0]", le_epochs=1, le_folds=2, backbone="resnet18",
                                    image_size=16, positive_label="M1", progress=False, batch_size=8)
    out = compare.prepare_out(cfg)
    found = compare.run_or_collect(cfg, out)
    le = compare.label_efficiency(cfg, out, main_runs=found)
    assert list(le["fraction"]) == [0.5, 1.0]
    assert (out / "label_efficiency" / "scratch_frac0.5" / "metrics.json").exists()  # computed here
    assert le.loc[1, "run"] == str(runs / "scratch")  # 100% = the main run, reused
    assert le.loc[0, "n_train_median"] < le.loc[1, "n_train_median"]
    for fn in (compare.plot_roc, compare.plot_reliability, compare.plot_fold_aucs):
        fn(found, out=out)
    compare.plot_label_efficiency(le, out=out)
    table = compare.comparison_table(found)
    compare.save_results(out, table, compare.pairwise_tests({**found, "copy": found["scratch"]}, n_boot=20), le,
                         runs=found)
    for f in ("comparison.csv", "pairwise.csv", "label_efficiency.csv", "comparison.json", "provenance.json"):
        assert (out / f).exists(), f
    assert {p.name for p in (out / "figures").iterdir()} >= {"roc.png", "reliability.png", "fold_aucs.png",
                                                             "label_efficiency.png"}
    doc = json.loads((out / "comparison.json").read_text())
    assert set(doc) >= {"table", "pairwise", "label_efficiency", "runs"}


def test_config_parses_papermill_strings():
    cfg = CompareConfig.from_params(inits="['glom', 'scratch']", fractions="0.1,1", seeds="[0, 1]")
    assert cfg.inits == ["glom", "scratch"] and cfg.fractions == [0.1, 1.0] and cfg.seeds == [0, 1]
    with pytest.raises(ValueError, match="inits"):
        CompareConfig.from_params(inits=["random"])


@pytest.mark.slow
def test_notebooks_03_and_04_execute(setup, tmp_path):
    papermill = pytest.importorskip("papermill")
    manifest, runs, _ = setup
    out03 = tmp_path / "nb03"
    papermill.execute_notebook(str(REPO / "notebooks" / "03_finetune.ipynb"), str(tmp_path / "03.ipynb"),
                               parameters=dict(init="scratch", data=str(manifest), out=str(out03),
                                               backbone="resnet18", image_size=16, epochs=1, folds=2,
                                               positive_label="M1", progress=False),
                               cwd=str(REPO), progress_bar=False)
    assert (out03 / "figures" / "roc.png").exists() and (out03 / "model.safetensors").exists()
    out04 = tmp_path / "nb04"
    papermill.execute_notebook(str(REPO / "notebooks" / "04_baseline_comparison.ipynb"), str(tmp_path / "04.ipynb"),
                               parameters=dict(runs=str(runs), out=str(out04), inits=["scratch", "imagenet"],
                                               fractions=[1.0], n_boot=50, progress=False),
                               cwd=str(REPO), progress_bar=False)
    assert (out04 / "comparison.csv").exists() and (out04 / "figures" / "label_efficiency.png").exists()
    table = pd.read_csv(out04 / "comparison.csv")
    assert list(table["init"]) == ["scratch", "imagenet"]


def test_notebooks_are_clean():
    import nbformat

    for name in ("03_finetune.ipynb", "04_baseline_comparison.ipynb"):
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", [])
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
        assert "chdir_project_root" in code[1].source
    from glomlib.evaluate.compare import CompareConfig as C4
    from glomlib.train.finetune import FinetuneConfig as C3

    for name, cls in (("03_finetune.ipynb", C3), ("04_baseline_comparison.ipynb", C4)):
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        src = nb.cells[[c.cell_type for c in nb.cells].index("code")].source
        names = [line.split("=")[0].strip() for line in src.splitlines() if "=" in line]
        assert names == cls.field_names(), name


def test_per_center_auc(setup):
    _, runs, _ = setup
    found = compare.collect_runs(runs)
    t = compare.per_center_auc(found)
    assert list(t.index) == ["A", "B"] and list(t.columns) == ["n", "n_pos", "imagenet", "scratch"]
    assert t["n"].sum() == 32
