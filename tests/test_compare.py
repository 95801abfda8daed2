"""glomlib.evaluate.compare and notebook 04: collect 03's runs (never train), table, paired tests, label efficiency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill
import pytest

from glomlib.evaluate import compare
from glomlib.evaluate.compare import CompareConfig
from glomlib.train.finetune import run_finetune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny finished runs laid out as <runs>/<init>/ (what the pipeline writes); scratch holds two label
    fractions and two seeds, the imagenet stand-in one fraction and the same two seeds."""
    from conftest import build_tiny_dataset

    root = tmp_path_factory.mktemp("cmp")
    manifest = build_tiny_dataset(root / "data", n_slides=8, per_slide=4, size=16)
    runs = root / "finetune"
    common = dict(
        data=str(manifest),
        backbone="resnet18",
        image_size=16,
        epochs=1,
        batch_size=8,
        folds=2,
        positive_label="M1",
        progress=False,
        final_model=False,
        seeds=[0, 1],
    )
    # "imagenet" stand-in: a second scratch run with another lr, written under imagenet/ (no weights needed)
    run_finetune(init="scratch", out=str(runs / "scratch"), lr=1e-3, label_fractions=[0.5, 1.0], **common)
    run_finetune(init="scratch", out=str(runs / "imagenet"), lr=3e-3, **common)
    return manifest, runs, common


def test_collect_table_and_pairwise(setup):
    manifest, runs, _ = setup
    with pytest.raises(FileNotFoundError, match=r"glom.*notebook 03"):
        compare.collect_runs(runs, inits=("glom", "imagenet", "scratch"))
    found = compare.collect_runs(runs, inits=("imagenet", "scratch"))
    assert list(found) == ["imagenet", "scratch"]
    assert compare.main_fraction(found) == 1.0
    main = compare.main_runs(found)
    assert set(main["scratch"]["predictions"]["label_fraction"]) == {1.0}
    assert len(found["scratch"]["predictions"]) == 2 * len(main["scratch"]["predictions"])  # both fractions kept
    table = compare.comparison_table(main)
    assert list(table.index) == ["imagenet", "scratch"]
    assert table.loc["scratch", "AUC"].count("±") == 1
    assert table.loc["scratch", "folds × seeds"] == 4 and table.loc["scratch", "seeds"] == 2
    assert table.loc["scratch", "label fraction"] == 1.0
    ref = compare.comparison_table(main, reference=True)
    assert "scratch (study, M1 vs M0)" in ref.index
    oof = compare.paired_oof(main)
    assert len(oof) == 32 and {"imagenet", "scratch", "y", "slide"} <= set(oof.columns)
    pw = compare.pairwise_tests(main, n_boot=50)
    assert len(pw) == 1 and 0 <= pw.loc[0, "delong_p"] <= 1
    assert pw.loc[0, "boot_ci_low"] <= pw.loc[0, "diff"] <= pw.loc[0, "boot_ci_high"]


def test_collect_by_list_and_latest(setup, tmp_path):
    _, runs, _ = setup
    # a run folder (or a comma-separated list) is taken for the init its metrics.json names, not its folder name
    listed = compare.collect_runs(str(runs / "imagenet"), inits=("scratch",))
    assert listed["scratch"]["dir"] == runs / "imagenet"  # the stand-in is an init=scratch run
    with pytest.raises(ValueError, match="two runs of init 'scratch'"):
        compare.collect_runs(f"{runs / 'scratch'},{runs / 'imagenet'}", inits=("scratch",))
    with pytest.raises(FileNotFoundError, match="not a finished fine-tune run"):
        compare.collect_runs(f"{runs / 'scratch'},{tmp_path}", inits=("scratch",))
    latest = compare.collect_runs("latest", inits=("scratch",), root=runs.parent)
    assert latest["scratch"]["dir"] in (runs / "scratch", runs / "imagenet")  # both are init=scratch runs
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        compare.collect_runs("latest", inits=("glom",), root=tmp_path)


def test_runs_on_other_data_are_refused(setup, tmp_path):
    import shutil

    manifest, runs, _ = setup
    assert set(compare.collect_runs(runs, inits=("imagenet", "scratch"), data=manifest)) == {"imagenet", "scratch"}
    with pytest.raises(ValueError, match="other manifests"):
        compare.collect_runs(runs, inits=("imagenet", "scratch"), data=tmp_path / "other.csv")
    moved = tmp_path / "runs"
    shutil.copytree(runs, moved)
    prov = moved / "imagenet" / "provenance.json"
    doc = json.loads(prov.read_text())
    doc["data_fingerprint"] = "something-else"
    prov.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="different data"):
        compare.collect_runs(moved, inits=("imagenet", "scratch"))


def test_label_efficiency_from_fractions_found(setup, tmp_path):
    manifest, runs, common = setup
    cfg = CompareConfig.from_params(runs=str(runs), out=str(tmp_path / "le"), inits="scratch,imagenet", n_boot=20)
    out = compare.prepare_out(cfg)
    found = compare.collect_runs(cfg.runs, cfg.inits)
    le = compare.label_efficiency(found)
    s = le[le["init"] == "scratch"].reset_index(drop=True)
    assert list(s["fraction"]) == [0.5, 1.0] and (s["run"] == str(runs / "scratch")).all()  # one run, two points
    assert (s["n_folds"] == 4).all() and (s["n_seeds"] == 2).all()
    assert s.loc[0, "n_train_median"] < s.loc[1, "n_train_median"]
    assert list(le.loc[le["init"] == "imagenet", "fraction"]) == [1.0]
    assert not any((out / d).exists() for d in ("label_efficiency", "finetune"))  # 04 trained nothing
    main = compare.main_runs(found)
    for fn in (compare.plot_roc, compare.plot_reliability, compare.plot_fold_aucs):
        fn(main, out=out)
    compare.plot_label_efficiency(le, out=out)
    table = compare.comparison_table(main)
    compare.save_results(
        out, table, compare.pairwise_tests({**main, "copy": main["scratch"]}, n_boot=20), le, runs=found
    )
    for f in ("comparison.csv", "pairwise.csv", "label_efficiency.csv", "comparison.json", "provenance.json"):
        assert (out / f).exists(), f
    assert {p.name for p in (out / "figures").iterdir()} >= {
        "roc.png",
        "reliability.png",
        "fold_aucs.png",
        "label_efficiency.png",
    }
    doc = json.loads((out / "comparison.json").read_text())
    assert set(doc) >= {"table", "pairwise", "label_efficiency", "runs"}


def test_evaluate_never_imports_train():
    """04 (and every evaluate module) reads runs; importing them must not pull in the training code."""
    code = (
        "import sys, pkgutil, importlib, glomlib.evaluate as e\n"
        "for m in pkgutil.iter_modules(e.__path__): importlib.import_module('glomlib.evaluate.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('glomlib.train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_config_parses_papermill_strings():
    cfg = CompareConfig.from_params(inits="['glom', 'scratch']")
    assert cfg.inits == ["glom", "scratch"]
    with pytest.raises(ValueError, match="inits"):
        CompareConfig.from_params(inits=["random"])
    with pytest.raises(ValueError, match="unknown"):  # 04 has no training parameters any more
        CompareConfig.from_params(fractions=[0.1, 1.0])


@pytest.mark.slow
def test_notebooks_03_and_04_execute(setup, tmp_path):
    manifest, runs, _ = setup
    out03 = tmp_path / "nb03"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "03_finetune.ipynb"),
        str(tmp_path / "03.ipynb"),
        parameters=dict(
            init="scratch",
            data=str(manifest),
            out=str(out03),
            backbone="resnet18",
            image_size=16,
            epochs=1,
            folds=2,
            label_fractions=[0.5, 1.0],
            positive_label="M1",
            progress=False,
        ),
        cwd=str(REPO),
        progress_bar=False,
    )
    assert (out03 / "figures" / "roc.png").exists() and (out03 / "model.safetensors").exists()
    assert (out03 / "checkpoints" / "frac0.5-seed0-fold1" / "model.safetensors").exists()
    out04 = tmp_path / "nb04"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "04_baseline_comparison.ipynb"),
        str(tmp_path / "04.ipynb"),
        parameters=dict(runs=str(runs), out=str(out04), inits=["scratch", "imagenet"], n_boot=50),
        cwd=str(REPO),
        progress_bar=False,
    )
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
    found = compare.main_runs(compare.collect_runs(runs, inits=("imagenet", "scratch")))
    t = compare.per_center_auc(found)
    assert list(t.index) == ["A", "B"] and list(t.columns) == ["n", "n_pos", "imagenet", "scratch"]
    assert t["n"].sum() == 32


def _fake_run(d: Path, init: str, fp: str, metas: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"init": init}))
    (d / "provenance.json").write_text(json.dumps({"data_fingerprint": fp}))
    for k, meta in enumerate(metas):
        (d / "checkpoints" / f"seed0-fold{k}").mkdir(parents=True)
        doc = {"init_info": {"init": init, "ssl_meta": meta}}
        (d / "checkpoints" / f"seed0-fold{k}" / "result.json").write_text(json.dumps(doc))
    return d


def test_starting_weights_says_what_the_encoder_saw(tmp_path):
    from glomlib.evaluate.runs import starting_weights

    meta = {"data_fingerprint": "abc", "ssl_init": "imagenet", "epochs": "6", "exclude_centre": "", "config": "{}"}
    w = starting_weights(_fake_run(tmp_path / "g", "glom", "abc", [meta, meta]))
    assert w == {"init": "glom", "ssl_init": "imagenet", "ssl_epochs": 6, "exclude_centre": [], "same_data": True}
    other = starting_weights(_fake_run(tmp_path / "o", "glom", "xyz", [meta]))
    assert other["same_data"] is False  # pretrained on other data: it did not see these test images
    sub = {**meta, "config": {"max_images": 100}}  # a parsed config, pretrained on a subset
    assert starting_weights(_fake_run(tmp_path / "s", "glom", "abc", [sub]))["same_data"] is False
    loco = [{**meta, "exclude_centre": c} for c in ("B", "A")]
    w = starting_weights(_fake_run(tmp_path / "l", "glom", "abc", loco))
    assert w["exclude_centre"] == ["A", "B"] and w["same_data"] is False
    assert starting_weights(_fake_run(tmp_path / "i", "imagenet", "abc", [])) == {"init": "imagenet"}
    assert starting_weights(_fake_run(tmp_path / "n", "glom", "abc", []))["same_data"] is None  # cannot tell
