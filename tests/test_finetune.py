"""glomlib.train.finetune: end to end on tiny generated images for every init, resume, label fraction, leakage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.core import runtime
from glomlib.core.config import ConfigError
from glomlib.train.finetune import FinetuneConfig, run_finetune, subsample_labels

PRED_COLUMNS = "path slide center label y prob pred fold seed init label_fraction budget n_labels n_labels_pos".split()


def _params(manifest, out, **kw):
    p = dict(
        data=str(manifest),
        out=str(out),
        backbone="resnet18",
        image_size=16,
        epochs=1,
        batch_size=8,
        folds=2,
        seeds=[0],
        positive_label="M1",
        patience=1,
        progress=False,
        init="scratch",
    )
    p.update(kw)
    return p


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from conftest import build_tiny_dataset

    return build_tiny_dataset(tmp_path_factory.mktemp("ft"), n_slides=8, per_slide=4, size=16)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from glomlib.models.backbones import build_backbone
    from glomlib.models.files import save_encoder

    bb, _ = build_backbone("resnet18", init="scratch")
    path = tmp_path_factory.mktemp("ssl") / "encoder.safetensors"
    save_encoder(path, bb, {"backbone": "resnet18", "image_size": 16})
    return path


@pytest.fixture(scope="module")
def scratch_run(manifest, tmp_path_factory):
    return run_finetune(**_params(manifest, tmp_path_factory.mktemp("run") / "scratch"))


def _check_run(res, manifest, init):
    out = Path(res.out)
    for f in ("config.json", "provenance.json", "predictions.csv", "metrics.json", "folds.csv", "model.safetensors"):
        assert (out / f).is_file(), f
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(pred.columns) == PRED_COLUMNS
    man = pd.read_csv(manifest)
    assert len(pred) == len(man) and pred["path"].is_unique  # every image predicted out-of-fold exactly once
    assert set(pred["init"]) == {init}
    assert pred["prob"].between(0, 1).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["init"] == init and len(m["per_fold"]) == 2
    for k in ("auc", "accuracy", "f1_weighted", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece"):
        assert set(m["summary"][k]) >= {"mean", "std", "text"}
    from glomlib.evaluate.predict import load_model

    model, meta = load_model(out / "model.safetensors")
    assert meta["init"] == init and meta["positive_label"] == "M1" and meta["negative_label"] == "M0"
    assert meta["image_size"] == 16 and len(meta["mean"]) == 3
    # stain_normalize="auto" (the default) resolved per init, recorded where predict and a resume read it
    want = {"glom": "macenko", "imagenet": "macenko", "scratch": ""}[init]
    assert meta["stain_normalize"] == want
    assert json.loads((out / "config.json").read_text())["stain_normalize"] == want
    assert (out / "stain.json").is_file() == bool(want)


def test_scratch_end_to_end(scratch_run, manifest):
    _check_run(scratch_run, manifest, "scratch")
    folds = pd.read_csv(scratch_run.out / "folds.csv")
    assert {"seed", "slide", "fold", "n", "n_pos"} <= set(folds.columns)
    assert folds["slide"].is_unique and folds["n"].sum() == 32


def test_run_writes_bundle_of_fold_models_and_final_models(scratch_run):
    """The default bundle: the fold models and three final models (all labels, seeds apart), the first final model
    being model.safetensors; combined by the mean of their probabilities."""
    from glomlib.evaluate.predict import load_model, predict

    model, meta = load_model(scratch_run.out / "bundle.safetensors")
    names = ["seed0-fold0", "seed0-fold1", "final-seed1000", "final-seed2000", "final"]
    assert [m["name"] for m in meta["members"]] == names and meta["combine"] == "mean_prob"
    assert [m["seed"] for m in meta["members"]] == [0, 0, 1000, 2000, 0]
    final, fmeta = load_model(scratch_run.out / "model.safetensors")
    assert meta["threshold"] == fmeta["threshold"] and meta["combine"] in ("mean_prob", "mean_logit")
    imgs = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    each = np.stack([predict(m, meta, imgs) for m in model.members], axis=1)
    assert np.allclose(predict(final, fmeta, imgs), each[:, -1], atol=1e-6)  # the first final model is a member
    for seed, k in ((1000, 2), (2000, 3)):  # the others are kept as files, and differ from it (their own seed)
        other, ometa = load_model(scratch_run.out / "finals" / f"final-seed{seed}.safetensors")
        assert ometa["seed"] == seed and np.allclose(predict(other, ometa, imgs), each[:, k], atol=1e-6)
        assert not np.allclose(each[:, k], each[:, -1], atol=1e-4)
    from glomlib.models.bundle import combine_probs

    assert np.allclose(predict(model, meta, imgs), combine_probs(each, meta["combine"]), atol=1e-5)


def test_bundle_of_final_models_only(manifest, tmp_path):
    res = run_finetune(**_params(manifest, tmp_path / "r", final_seeds=2, bundle_members="finals"))
    from glomlib.evaluate.predict import load_model

    _, meta = load_model(res.out / "bundle.safetensors")
    assert [m["name"] for m in meta["members"]] == ["final-seed1000", "final"]
    one = run_finetune(**_params(manifest, tmp_path / "one", final_seeds=1, bundle_members="finals"))
    assert [m["name"] for m in load_model(one.out / "bundle.safetensors")[1]["members"]] == ["final"]
    assert not (one.out / "finals").exists()


def test_glom_end_to_end(manifest, encoder, tmp_path):
    # the encoder's metadata names no stain option (pretrained without one); glom's auto is macenko: one warning
    with pytest.warns(UserWarning, match=r"pretrained with stain_normalize='' but this fine-tune uses 'macenko'"):
        res = run_finetune(**_params(manifest, tmp_path / "glom", init="glom", ssl_checkpoint=str(encoder), epochs=1))
    _check_run(res, manifest, "glom")
    r = json.loads((res.out / "checkpoints" / "seed0-fold0" / "result.json").read_text())
    assert r["init_info"]["ssl_checkpoint"] == str(encoder.resolve())


def test_imagenet_end_to_end(manifest, tmp_path):
    res = run_finetune(
        **_params(
            manifest, tmp_path / "imnet", init="imagenet", backbone="efficientnet_lite0", epochs=1, final_model=True
        )
    )
    _check_run(res, manifest, "imagenet")


def test_glom_errors_are_clear(manifest, encoder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_finetune(**_params(manifest, tmp_path / "a", init="glom", ssl_checkpoint=str(tmp_path / "none.st")))
    with pytest.raises(ValueError, match="resnet18"):  # encoder saved for resnet18, fine-tune asks resnet50
        run_finetune(**_params(manifest, tmp_path / "b", init="glom", ssl_checkpoint=str(encoder), backbone="resnet50"))


def test_stain_auto_resolves_per_init_and_an_explicit_option_wins():
    """auto = README's leave-one-centre-out choice: macenko for the pretrained inits, off for scratch; the field
    keeps "auto" (a derived config re-resolves it for its own init), any explicit option is used as given."""
    import dataclasses

    from glomlib.train.finetune.config import AUTO_STAIN

    assert FinetuneConfig().stain_normalize == "auto" and AUTO_STAIN == {
        "glom": "macenko",
        "imagenet": "macenko",
        "scratch": "",
    }
    assert [FinetuneConfig(init=i).stain_method for i in ("glom", "imagenet", "scratch")] == ["macenko", "macenko", ""]
    assert dataclasses.replace(FinetuneConfig(init="imagenet"), init="scratch").stain_method == ""
    assert FinetuneConfig(init="imagenet", stain_normalize="").stain_method == ""
    assert FinetuneConfig(init="scratch", stain_normalize="macenko").stain_method == "macenko"
    assert FinetuneConfig.from_params(init="glom", stain_normalize="reinhard").stain_method == "reinhard"
    with pytest.raises(ConfigError, match="stain_normalize"):
        FinetuneConfig(stain_normalize="automatic")


def test_explicit_stain_option_is_what_the_model_file_and_the_encoder_check_see():
    """An explicit "" wins over auto in the saved model's metadata; an encoder pretrained with the fine-tune's own
    option is not warned about, one pretrained with another option is (one line naming both)."""
    import warnings

    from glomlib.train.finetune.encoder import _check_encoder_meta
    from glomlib.train.finetune.save import model_meta

    off = FinetuneConfig(init="imagenet", stain_normalize="")
    assert model_meta(off, ("M1", "M0"), "fp")["stain_normalize"] == ""
    assert model_meta(FinetuneConfig(init="imagenet"), ("M1", "M0"), "fp")["stain_normalize"] == "macenko"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_encoder_meta(FinetuneConfig(init="glom"), {"stain_normalize": "macenko"})
        _check_encoder_meta(FinetuneConfig(init="glom", stain_normalize=""), {})  # older encoders: no key = none
    with pytest.warns(
        UserWarning, match="pretrained with stain_normalize='reinhard' but this fine-tune uses 'macenko'"
    ):
        _check_encoder_meta(FinetuneConfig(init="glom"), {"stain_normalize": "reinhard"})


def test_latest_encoder_missing(tmp_path, monkeypatch):
    from glomlib.core.runs import latest_encoder

    with pytest.raises(FileNotFoundError, match="notebook 02"):
        latest_encoder(tmp_path)
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "encoder.safetensors").write_text("x")
    assert latest_encoder(tmp_path).parent.name == "r1"


def test_no_slide_on_both_sides(scratch_run):
    out = scratch_run.out
    for k in range(2):
        r = json.loads((out / "checkpoints" / f"seed0-fold{k}" / "result.json").read_text())
        test, train, val = set(r["test_slides"]), set(r["train_slides"]), set(r["val_slides"])
        assert test and train and val
        assert not (test & train) and not (test & val) and not (train & val)
    pred = scratch_run.predictions
    assert (pred.groupby("slide")["fold"].nunique() == 1).all()


def test_label_fractions_one_protocol_in_one_run(manifest, scratch_run, tmp_path):
    """Every fraction runs on the same test folds in the same run folder; the test fold is never subsampled; the
    step budget gives the small fraction as many optimiser steps as the full one; metrics.json has each fraction."""
    res = run_finetune(**_params(manifest, tmp_path / "fr", label_fractions="0.5,1", epochs=2, final_model=False))
    pred = res.predictions
    assert sorted(pred["label_fraction"].unique()) == [0.5, 1.0]
    half, full = (pred[pred["label_fraction"] == f].set_index("path").sort_index() for f in (0.5, 1.0))
    assert list(half.index) == list(full.index) == sorted(scratch_run.predictions["path"])  # every image, both
    assert (half["fold"] == full["fold"]).all()
    assert (full["fold"] == scratch_run.predictions.set_index("path").sort_index()["fold"]).all()
    rows = {(r["label_fraction"], r["fold"]): r for r in res.per_fold.to_dict("records")}
    for k in range(2):
        r_half = json.loads((res.out / "checkpoints" / f"frac0.5-seed0-fold{k}" / "result.json").read_text())
        r_full = json.loads((res.out / "checkpoints" / f"seed0-fold{k}" / "result.json").read_text())
        assert r_half["n_train_used"] < r_full["n_train_used"] == r_full["n_train_pool"]
        assert r_half["test_slides"] == r_full["test_slides"]
        assert rows[(0.5, k)]["n_train"] < rows[(1.0, k)]["n_train"]
        # step budget (min_steps=-1): the half-label fold makes at least as many steps per epoch as the full one
        assert rows[(0.5, k)]["passes_per_epoch"] >= 2 and rows[(1.0, k)]["passes_per_epoch"] == 1
        assert rows[(0.5, k)]["steps_per_epoch"] >= rows[(1.0, k)]["steps_per_epoch"]
        hist = json.loads((res.out / "checkpoints" / f"frac0.5-seed0-fold{k}" / "history.json").read_text())
        assert len(hist) == rows[(0.5, k)]["epochs_run"]  # validation is still checked once per epoch
    m = json.loads((res.out / "metrics.json").read_text())
    assert m["label_fractions"] == [0.5, 1.0] and m["label_fraction"] == 1.0
    assert set(m["by_fraction"]) == {"0.5", "1"}
    assert len(m["by_fraction"]["0.5"]["per_fold"]) == 2 and m["per_fold"] == m["by_fraction"]["1"]["per_fold"]
    assert set(res.summaries) == {"0.5", "1"}
    assert not (res.out / "model.safetensors").exists()


def test_fold_models_kept_small_and_reproduce_oof(scratch_run, manifest):
    """Each (seed, fold) model is saved with its metadata; read back, it predicts its test fold like the run did."""
    import torch

    from glomlib.data.cache import load_images
    from glomlib.evaluate.predict import load_model
    from glomlib.evaluate.runs import fold_models
    from glomlib.models.inference import predict_probs

    table = fold_models(scratch_run.out)
    precision = json.loads((scratch_run.out / "provenance.json").read_text())["runtime"]["precision"]
    assert list(zip(table["seed"], table["fold"])) == [(0, 0), (0, 1)]
    n_params = None
    for _, r in table.iterrows():
        res = json.loads((r["model"].parent / "result.json").read_text())
        model, meta = load_model(r["model"])
        assert meta["fold"] == r["fold"] and meta["seed"] == 0 and meta["label_fraction"] == 1.0
        assert set(meta["test_slides"]) == set(res["test_slides"]) == set(r["test_slides"])
        assert meta["init"] == "scratch" and meta["positive_label"] == "M1" and meta["image_size"] == 16
        assert res["model"]["max_abs_diff"] <= 1e-3
        pred = pd.read_csv(r["model"].parent / "predictions.csv")
        assert set(pred["slide"]) == set(meta["test_slides"])
        imgs = torch.from_numpy(np.array(load_images(list(pred["path"]), 16)))
        probs = predict_probs(model, imgs, plan=runtime.plan("cpu", precision))  # the precision the run used
        assert np.abs(probs - pred["prob"].to_numpy()).max() <= 1e-3
        n_params = sum(p.numel() for p in model.state_dict().values() if p.is_floating_point())
        if res["model"]["dtype"] == "float16":  # half the float32 size (plus a small header)
            assert r["model"].stat().st_size < 0.6 * 4 * n_params


def test_passes_per_epoch():
    from glomlib.train.finetune import passes_per_epoch

    assert passes_per_epoch(500, 32, 15, 0) == 1
    assert passes_per_epoch(500, 32, 15, 240) == 1  # 16 steps x 15 epochs already make 240
    assert passes_per_epoch(50, 32, 15, 240) == 8  # 2 steps per pass: 8 passes per epoch -> 240 steps
    assert passes_per_epoch(1, 32, 1, 5) == 5


def test_subsample_labels_stratified_and_deterministic():
    df = pd.DataFrame({"y": [1] * 20 + [0] * 80})
    a = subsample_labels(df, 0.25, seed=3)
    assert a.sum() == 25 and a[:20].sum() == 5
    assert (a == subsample_labels(df, 0.25, seed=3)).all()
    assert not (a == subsample_labels(df, 0.25, seed=4)).all()
    assert subsample_labels(df, 1.0, seed=0).all()


def test_resume_skips_finished_folds(manifest, scratch_run, tmp_path, monkeypatch):
    import shutil

    import glomlib.train.finetune as ft
    import glomlib.train.finetune.cv as ft_cv

    out = tmp_path / "resumed"
    shutil.copytree(scratch_run.out, out)
    cfg = json.loads((out / "config.json").read_text())
    # the run is interrupted during fold 1: its result and the run-level outputs are missing
    shutil.rmtree(out / "checkpoints" / "seed0-fold1")
    for f in ("metrics.json", "predictions.csv", "model.safetensors", "run.json"):
        (out / f).unlink(missing_ok=True)
    calls = []
    real = ft.train_one

    def counting(*a, **kw):
        calls.append(kw.get("desc"))
        return real(*a, **kw)

    monkeypatch.setattr(ft_cv, "train_one", counting)
    res = ft.run_finetune(**{**_params(manifest, out), "resume": True})
    assert calls == ["scratch 100% s0 f1", "scratch final"]  # fold 0 was not recomputed
    assert len(res.per_fold) == 2 and (out / "metrics.json").exists()
    old = pd.read_csv(scratch_run.out / "checkpoints" / "seed0-fold0" / "predictions.csv")
    new = res.predictions[res.predictions["fold"] == 0].reset_index(drop=True)
    assert np.allclose(old["prob"], new["prob"])
    assert cfg["init"] == "scratch"
    with pytest.raises(ConfigError, match="finished"):  # a finished run is never continued
        ft.run_finetune(**{**_params(manifest, out), "resume": True, "lr": 0.5})


def test_resume_keeps_the_precision_of_the_first_folds(manifest, scratch_run, tmp_path):
    """Each fold says where it trained; a resume whose machine would switch precision mid-table is refused before
    any training, and resuming with the first folds' precision (a free field) continues."""
    import shutil

    import glomlib.train.finetune as ft
    from glomlib.core.io import ResumeError

    fold0 = json.loads((scratch_run.out / "checkpoints" / "seed0-fold0" / "result.json").read_text())
    assert fold0["runtime"]["device"] == "cpu" and fold0["runtime"]["cpu"] == runtime.cpu_model()
    first = fold0["runtime"]["precision"]
    assert first == json.loads((scratch_run.out / "provenance.json").read_text())["runtime"]["precision"]
    out = tmp_path / "other-machine"
    shutil.copytree(scratch_run.out, out)
    shutil.rmtree(out / "checkpoints" / "seed0-fold1")
    for f in ("metrics.json", "predictions.csv", "model.safetensors", "run.json"):
        (out / f).unlink(missing_ok=True)
    other = "bf16" if first == "fp32" else "fp32"
    prov = json.loads((out / "provenance.json").read_text())
    prov["runtime"]["precision"] = other  # as if the first folds had trained on a machine that chose the other
    (out / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ResumeError, match=f"trained in {other}.*precision={other}"):
        ft.run_finetune(**{**_params(manifest, out), "resume": True, "precision": first})
    assert not (out / "checkpoints" / "seed0-fold1").exists()  # refused before training anything
    ft.run_finetune(**{**_params(manifest, out), "resume": True, "precision": other})
    fold1 = json.loads((out / "checkpoints" / "seed0-fold1" / "result.json").read_text())
    assert fold1["runtime"]["precision"] == other


def test_interrupted_fold_continues_from_epoch_checkpoint(manifest, tmp_path, monkeypatch):
    import glomlib.train.finetune as ft
    import glomlib.train.finetune.cv as ft_cv

    out = tmp_path / "interrupted"
    # simulate a crash at the start of fold 1 (after fold 0 is saved)
    real = ft.train_one

    def crash(*a, **kw):
        if kw.get("desc", "").endswith("f1"):
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ft_cv, "train_one", crash)
    with pytest.raises(KeyboardInterrupt):
        ft.run_finetune(**_params(manifest, out, epochs=1, final_model=False))
    assert (out / "checkpoints" / "seed0-fold0" / "result.json").exists()
    assert not (out / "metrics.json").exists()
    monkeypatch.setattr(ft_cv, "train_one", real)
    with pytest.raises(FileExistsError):  # without resume, a non-empty out is refused
        ft.run_finetune(**_params(manifest, out, epochs=1, final_model=False))
    res = ft.run_finetune(**_params(manifest, out, epochs=1, final_model=False, resume=True))
    assert len(res.per_fold) == 2


def test_config_validation():
    with pytest.raises(ConfigError, match="init"):
        FinetuneConfig.from_params(init="random")
    with pytest.raises(ConfigError, match="label_fractions"):
        FinetuneConfig.from_params(label_fractions=[0])
    with pytest.raises(ConfigError, match="label_fractions"):
        FinetuneConfig.from_params(label_fractions="0.5,0.5")
    assert FinetuneConfig.from_params(label_fractions="[1, 0.1]").fractions == [0.1, 1.0]
    with pytest.raises(ConfigError, match="min_steps"):
        FinetuneConfig.from_params(min_steps=-2)
    with pytest.raises(ConfigError, match="unknown"):
        FinetuneConfig.from_params(epoch=3)
    assert FinetuneConfig.from_params(seeds="[0, 1]").seeds == [0, 1]
    assert FinetuneConfig.from_params(seeds=2).seeds == [2]


def test_wrong_positive_label_is_explained(manifest, tmp_path):
    with pytest.raises(ValueError, match="positive"):  # ManifestError or ConfigError, naming the parameter
        run_finetune(**_params(manifest, tmp_path / "x", positive_label="GS"))


def test_cli(manifest, tmp_path):
    from glomlib.cli import main

    rc = main(
        [
            "finetune",
            "--init",
            "scratch",
            "--data",
            str(manifest),
            "--out",
            str(tmp_path / "cli"),
            "--backbone",
            "resnet18",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--folds",
            "2",
            "--positive-label",
            "M1",
            "--progress",
            "false",
            "--final-model",
            "false",
            "--seeds",
            "0",
        ]
    )
    assert rc == 0 and (tmp_path / "cli" / "metrics.json").exists()


@pytest.mark.realdata
def test_real_data_slice(shared_data, tmp_path):
    """A few dozen real PAS patches (8 slides), 32 px: the pipeline runs and predictions are slide-grouped."""
    rows = []
    root = shared_data / "Patches" / "Raw" / "Images"
    for label in ("GS", "nonGS"):
        for p in sorted((root / label).glob("*.png")):
            rows.append({"path": str(p), "label": label, "slide": p.stem.rsplit("-", 1)[0]})
    df = pd.DataFrame(rows)
    slides = sorted(df.loc[df.label == "GS", "slide"].unique())[:8]
    sub = df[df.slide.isin(slides)].groupby(["slide", "label"]).head(3)
    manifest = tmp_path / "manifest.csv"
    sub.to_csv(manifest, index=False)
    res = run_finetune(
        **_params(manifest, tmp_path / "real", positive_label="GS", image_size=32, epochs=1, final_model=False)
    )
    assert len(res.predictions) == len(sub)
    assert (res.predictions.groupby("slide")["fold"].nunique() == 1).all()
    assert np.isfinite(res.summary["auc"]["mean"])


def test_split_test_rows_are_held_out(tmp_path):
    """Rows with split=test never enter CV or the final model's training; the final model predicts them once."""
    from conftest import build_tiny_dataset

    manifest = build_tiny_dataset(
        tmp_path / "d", n_slides=8, per_slide=4, size=16, extra_columns={"split": lambda s, k: "test" if s == 7 else ""}
    )
    res = run_finetune(**_params(manifest, tmp_path / "held", epochs=1))
    assert len(res.predictions) == 28 and "S07" not in set(res.predictions["slide"])
    held = pd.read_csv(res.out / "heldout_predictions.csv")
    assert len(held) == 4 and set(held["slide"]) == {"S07"}
    assert (res.out / "heldout_metrics.json").exists()


def test_train_one_continues_from_epoch_checkpoint(manifest, tmp_path):
    """A fold interrupted after epoch 1 continues at epoch 2 from its (weights-only loadable) state file."""
    import torch

    from glomlib.data.cache import load_images
    from glomlib.data.manifest import read_manifest
    from glomlib.train.finetune import train_one

    df = read_manifest(manifest, positive_label="M1")
    images = torch.from_numpy(np.array(load_images(list(df["path"]), 16)))
    y = df["y"].to_numpy()
    idx_tr, idx_va = np.arange(0, 24), np.arange(24, 32)
    state = tmp_path / "state.pt"
    cfg = FinetuneConfig.from_params(**{**_params(manifest, tmp_path), "epochs": 1, "patience": 5})
    train_one(cfg, images, y, idx_tr, idx_va, seed=0, plan=runtime.plan("cpu", "fp32"), state_path=state)
    assert torch.load(state, weights_only=True)["state"]["epoch"] == 1
    cfg2 = FinetuneConfig.from_params(**{**_params(manifest, tmp_path), "epochs": 2, "patience": 5})
    _, info = train_one(cfg2, images, y, idx_tr, idx_va, seed=0, plan=runtime.plan("cpu", "fp32"), state_path=state)
    assert info["epochs_run"] == 2 and [h["epoch"] for h in info["history"]] == [1, 2]


def test_zero_nonfinite_weights_only_touches_broken_entries():
    import torch

    from glomlib.train.finetune import zero_nonfinite_weights

    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight[0, 1] = float("nan")
        lin.bias[1] = float("inf")
    before = lin.weight.detach().clone()
    assert sorted(zero_nonfinite_weights(lin)) == ["bias", "weight"]
    assert lin.weight[0, 1] == 0 and lin.bias[1] == 0
    keep = torch.ones_like(before, dtype=torch.bool)
    keep[0, 1] = False
    assert torch.equal(lin.weight[keep], before[keep])  # every finite entry is unchanged
    assert zero_nonfinite_weights(lin) == []


# ---------------------------------------------------------------------------------- issue 19 (training side)
def test_duplicate_seeds_refused(capsys):
    """(3) `--seeds 0,0` trained and counted the same folds twice."""
    from glomlib.cli import main

    with pytest.raises(SystemExit) as e:
        main(["finetune", "--seeds", "0,0"])
    assert e.value.code == 2 and "seeds" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="seeds"):
        FinetuneConfig.from_params(seeds="1,1")


@pytest.mark.parametrize(
    "argv",
    [
        ["--patience", "0"],
        ["--patience", "-1"],
        ["--lr", "nan"],
        ["--lr", "-0.1"],
        ["--weight-decay", "-1"],
        ["--stain-augment", "-0.1"],
        ["--val-fraction", "1"],
        ["--stain-normalize", "bogus"],
        ["--label-fractions", "0,1"],
        ["--epochs", "0"],
    ],
)
def test_bad_options_are_usage_errors(argv):
    """(6) `--patience 0|-1` silently trained one epoch; `--lr nan` and a bogus stain option exited 70."""
    from glomlib.cli import main

    with pytest.raises(SystemExit) as e:
        main(["finetune", *argv])
    assert e.value.code == 2


def test_numeric_labels_refused_before_training(tmp_path, monkeypatch):
    """(4) labels 0/1 trained every fold, then failed at save ("positive_label=1 must name the positive class");
    now reading the manifest refuses them, naming the fix, before any training."""
    from conftest import build_tiny_dataset

    import glomlib.train.finetune.cv as ft_cv
    from glomlib.data.manifest import ManifestError

    m = build_tiny_dataset(tmp_path / "d", n_slides=4, labels=("1", "0"))
    monkeypatch.setattr(ft_cv, "train_one", lambda *a, **kw: pytest.fail("trained before refusing the labels"))
    with pytest.raises(ManifestError, match="not class names.*--label-map"):
        run_finetune(**_params(m, tmp_path / "run", positive_label="1"))


def _interrupt_after_first_final_model(monkeypatch, manifest, out, **kw):
    """run_finetune into ``out``, interrupted (KeyboardInterrupt) right after the first final model file is saved."""
    import glomlib.train.finetune.cv as ft_cv

    real = ft_cv.save_final_model

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft_cv, "save_final_model", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(**_params(manifest, out, **kw))


def test_interrupt_after_final_model_leaves_a_resumable_run(manifest, tmp_path, monkeypatch, recwarn):
    """(5) an interrupt after model.safetensors was written but before the run was marked finished made the run
    permanently un-resumable; resuming now completes it. Also: a tiny validation split warns."""
    import glomlib.train.finetune.cv as ft_cv
    from glomlib.cli import main

    out, real = tmp_path / "run", ft_cv.save_final_model
    _interrupt_after_first_final_model(monkeypatch, manifest, out, final_seeds=1)
    assert any(issubclass(w.category, ft_cv.SmallValidationWarning) for w in recwarn)
    assert (out / "model.safetensors").is_file() and json.loads((out / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(ft_cv, "save_final_model", real)
    argv = [
        "finetune",
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--backbone",
        "resnet18",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--folds",
        "2",
        "--positive-label",
        "M1",
        "--patience",
        "1",
        "--progress",
        "false",
        "--init",
        "scratch",
        "--resume",
    ]
    assert main(argv) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert main(argv) == 2  # now finished: never replaced


def test_resume_after_interrupt_is_bit_identical(manifest, tmp_path, monkeypatch):
    """(12) a KeyboardInterrupt at an epoch boundary, then resume == one uninterrupted run, bit for bit (the
    dropout generator's state is saved with the epoch)."""
    import torch

    import glomlib.train.finetune.train as ft_train
    from glomlib.data.cache import load_images
    from glomlib.data.manifest import read_manifest
    from glomlib.train.finetune import train_one

    df = read_manifest(manifest, positive_label="M1")
    images = torch.from_numpy(np.array(load_images(list(df["path"]), 16)))
    y, tr, va = df["y"].to_numpy(), np.arange(0, 24), np.arange(24, 32)
    cfg = FinetuneConfig.from_params(**{**_params(manifest, tmp_path), "epochs": 3, "patience": 5})
    plan = runtime.plan("cpu", "fp32")
    ref, _ = train_one(cfg, images, y, tr, va, seed=0, plan=plan, state_path=tmp_path / "a.pt")
    real = ft_train._save_state

    def save_then_interrupt(fit, path):
        real(fit, path)
        if fit.state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft_train, "_save_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_one(cfg, images, y, tr, va, seed=0, plan=plan, state_path=tmp_path / "b.pt")
    torch.manual_seed(123)  # whatever the process did in between
    model, info = train_one(cfg, images, y, tr, va, seed=0, plan=plan, state_path=tmp_path / "b.pt")
    assert info["epochs_run"] == 3
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_encoder_exits_5(tmp_path, capsys):
    """(19, defect 11) a missing SSL encoder is a model-file problem (exit 5), named with how to make it."""
    from conftest import build_tiny_dataset

    from glomlib.cli import EXIT_MODEL, main

    m = build_tiny_dataset(tmp_path / "d", n_slides=4, labels=("GS", "nonGS"))
    argv = ["finetune", "--data", str(m), "--positive-label", "GS", "--init", "glom", "--out", str(tmp_path / "r")]
    assert main([*argv, "--ssl-checkpoint", str(tmp_path / "missing.safetensors")]) == EXIT_MODEL
    assert "notebook 02" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_interrupt_between_final_models_resumes_without_retraining_them(manifest, tmp_path, monkeypatch):
    """The other final models are written before model.safetensors; a resume keeps those already written and
    trains only what is missing (here the first final model), then packs all of them."""
    import glomlib.train.finetune.cv as ft_cv

    out, real_save, real_train, calls = tmp_path / "run", ft_cv.save_final_model, ft_cv.train_one, []
    _interrupt_after_first_final_model(monkeypatch, manifest, out, final_seeds=2)
    other = out / "finals" / "final-seed1000.safetensors"
    assert other.is_file() and not (out / "model.safetensors").exists() and not (out / "bundle.safetensors").exists()
    written = other.stat().st_mtime_ns
    monkeypatch.setattr(ft_cv, "save_final_model", real_save)
    monkeypatch.setattr(ft_cv, "train_one", lambda *a, **kw: calls.append(kw["seed"]) or real_train(*a, **kw))
    res = run_finetune(**_params(manifest, out, final_seeds=2, resume=True))
    assert calls == [0] and other.stat().st_mtime_ns == written  # folds read back, seed 1000 kept
    from glomlib.evaluate.predict import load_model

    names = [m["name"] for m in load_model(res.out / "bundle.safetensors")[1]["members"]]
    assert names == ["seed0-fold0", "seed0-fold1", "final-seed1000", "final"]
