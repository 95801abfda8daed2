"""glomlib evaluate / calibrate / biopsy read-outs: external validation on mixed-size RGBA patches, threshold
transfer (a new calibrated model file, the old untouched), biopsy-level shares and calls, slide-bootstrap CIs."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from glomlib.cli import main
from glomlib.data.cache import load_images
from glomlib.evaluate import biopsy as B
from glomlib.evaluate import metrics as M
from glomlib.evaluate import uncertainty as U
from glomlib.evaluate.calibrate import fit_calibration, local_label_curve
from glomlib.evaluate.external import run_evaluate
from glomlib.evaluate.predict import load_model, predict
from glomlib.models.calibration import apply_calibration
from glomlib.models.files import read_model_meta, save_model
from glomlib.models.heads import build_classifier
from glomlib.models.inference import extract_features

SIZE = 16


def _patch(rng, positive: bool, side: int, shade: int) -> np.ndarray:
    """RGBA patch of ``side`` px: pale background, positives with a dark central blob; ``shade`` darkens all."""
    yy, xx = np.mgrid[:side, :side]
    blob = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (side / 3.2) ** 2
    img = rng.integers(160, 230, size=(side, side, 3)).astype(int)
    if positive:
        img[blob] = rng.integers(40, 90, size=(int(blob.sum()), 3))
    img = np.clip(img - shade, 0, 255).astype(np.uint8)
    alpha = np.full((side, side, 1), 255, np.uint8)
    return np.concatenate([img, alpha], axis=2)


def _manifest(root, write_png, *, slides=8, per_slide=10, shade=0, seed=0, centers=("A", "B"), prefix="S"):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(slides):
        share = (s + 1) / (slides + 1)  # slides differ in their share of positives
        for k in range(per_slide):
            pos = bool(rng.random() < share)
            side = int(rng.choice([20, 28, 37]))  # mixed sizes
            p = write_png(root / f"{prefix}{s}" / f"{k}.png", _patch(rng, pos, side, shade))
            rows.append(
                {
                    "path": str(p),
                    "label": "M1" if pos else "M0",
                    "slide": f"{prefix}{s}",
                    "center": centers[s % len(centers)],
                }
            )
    df = pd.DataFrame(rows)
    out = root / "manifest.csv"
    df.to_csv(out, index=False)
    return out, df


@pytest.fixture(scope="module")
def fitted_model(tmp_path_factory):
    """A resnet18 classifier whose head is a logistic regression fitted on its random features of training
    patches: an informative model without a training loop."""
    from conftest import _write_png
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("train")
    man, df = _manifest(root, _write_png, slides=6, per_slide=16, seed=1)
    torch.manual_seed(0)
    model = build_classifier("resnet18").eval()
    imgs = np.asarray(load_images(list(df["path"]), SIZE, cache_dir=root / "cache"))
    feats = extract_features(model.backbone, imgs)
    y = (df["label"] == "M1").to_numpy().astype(int)
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(lr.coef_, dtype=torch.float32))
        model.head.bias.copy_(torch.tensor(lr.intercept_, dtype=torch.float32))
    meta = {
        "backbone": "resnet18",
        "image_size": SIZE,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "positive_label": "M1",
        "negative_label": "M0",
        "init": "scratch",
        "threshold": 0.42,
        "threshold_rule": "fixed:0.42",
    }
    path = root / "model.safetensors"
    save_model(model, meta, path)
    return path


def test_evaluate_mixed_size_rgba(fitted_model, tmp_path, write_png):
    man, df = _manifest(tmp_path / "ext", write_png, seed=5)
    res = run_evaluate(
        model=str(fitted_model),
        manifest=str(man),
        out=str(tmp_path / "eval"),
        n_boot=200,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    out = tmp_path / "eval"
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == len(df) and set(pred["slide"]) == set(df["slide"])
    # the threshold comes from the model file and is the one applied
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["threshold"] == pytest.approx(0.42) and doc["threshold_rule"] == "fixed:0.42"
    assert (pred["pred"] == (pred["prob"] >= 0.42).astype(int)).all()
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(pred["y"], pred["prob"])
    assert doc["overall"]["auc"]["value"] == pytest.approx(auc)
    assert auc > 0.8, "the fitted model should rank the blob patches first"
    for m in M.METRICS:
        e = doc["overall"][m]
        assert e["ci_low"] <= e["value"] + 1e-9 and e["value"] <= e["ci_high"] + 1e-9, m
    assert set(doc["per_center_ci"]) == {"A", "B"}
    assert doc["per_center_ci"]["A"]["n"] + doc["per_center_ci"]["B"]["n"] == len(df)
    per_slide = pd.read_csv(out / "per_slide.csv")
    assert per_slide["n"].sum() == len(df) and len(per_slide) == df["slide"].nunique()
    bt = pd.read_csv(out / "biopsy_table.csv")
    truth = df.assign(y=(df.label == "M1").astype(int)).groupby("slide")["y"].mean()
    assert np.allclose(bt.set_index("slide")["true_share"].loc[truth.index], truth.to_numpy())
    assert (out / "figures" / "reliability.png").stat().st_size > 1000
    assert (out / "figures" / "bland_altman.png").stat().st_size > 1000
    assert doc["biopsy"]["rule"] == "oxford_m" and doc["before_calibration"] is None
    assert "all images" in res.table().index
    # nothing is overwritten
    with pytest.raises(Exception, match="exist|not empty|claimed|holds"):
        run_evaluate(model=str(fitted_model), manifest=str(man), out=str(out), n_boot=10, device="cpu")


def test_evaluate_rejects_unlabelled_and_foreign_labels(fitted_model, tmp_path, write_png):
    man, df = _manifest(tmp_path / "ext", write_png, slides=2, per_slide=3)
    df.loc[0, "label"] = ""
    df.to_csv(man, index=False)
    with pytest.raises(Exception, match="label"):
        run_evaluate(model=str(fitted_model), manifest=str(man), out=str(tmp_path / "e1"), n_boot=10, device="cpu")
    assert not (tmp_path / "e1").exists()  # a bad manifest claims no output folder


def test_evaluate_manifest_auto_uses_a_fold_models_unseen_slides(fitted_model, tmp_path, write_png, monkeypatch):
    man, df = _manifest(tmp_path / "data", write_png, slides=6, per_slide=4, seed=3)
    model, meta = load_model(fitted_model)
    run = tmp_path / "run"
    save_model(model, meta, run / "model.safetensors")  # final model: trained on every slide
    save_model(
        model,
        {**meta, "fold": 0, "label_fraction": 1.0, "test_slides": ["S1", "S4"]},
        run / "checkpoints" / "seed0-fold0" / "model.safetensors",
    )
    res = run_evaluate(
        model=str(run),
        manifest="auto",
        data=str(man),
        out=str(tmp_path / "ev"),
        n_boot=20,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    assert set(res.predictions["slide"]) == {"S1", "S4"} and len(res.predictions) == 8
    assert res.metrics["model"].endswith("seed0-fold0/model.safetensors")
    assert res.metrics["held_out_slides"] == ["S1", "S4"]
    assert len(pd.read_csv(tmp_path / "ev" / "manifest.csv")) == 8
    # the notebook's defaults (model latest, manifest auto): the newest fold model under runs/
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copytree(run, tmp_path / "runs" / "r1")
    res2 = run_evaluate(
        model="latest",
        manifest="auto",
        data=str(man),
        out=str(tmp_path / "ev3"),
        n_boot=10,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    assert set(res2.predictions["slide"]) == {"S1", "S4"}
    save_model(model, meta, tmp_path / "alone" / "model.safetensors")
    with pytest.raises(Exception, match="manifest auto"):
        run_evaluate(model=str(tmp_path / "alone"), manifest="auto", data=str(man), out=str(tmp_path / "ev2"))


def test_calibrate_writes_new_model_and_evaluate_shows_before_after(fitted_model, tmp_path, write_png):
    # another hospital: darker stain shifts every probability; the ranking survives
    local, _ = _manifest(tmp_path / "local", write_png, slides=6, per_slide=12, shade=130, seed=11, prefix="L")
    test, _ = _manifest(tmp_path / "test", write_png, slides=6, per_slide=12, shade=130, seed=12, prefix="T")
    before = hashlib.sha256(fitted_model.read_bytes()).hexdigest()
    new = tmp_path / "calibrated.safetensors"
    rc = main(
        ["calibrate", "--model", str(fitted_model), "--manifest", str(local), "--out", str(new), "--device", "cpu"]
    )
    assert rc == 0 and new.exists()
    assert hashlib.sha256(fitted_model.read_bytes()).hexdigest() == before  # the source is untouched
    meta = read_model_meta(new)
    assert meta["calibration"]["method"] == "platt" and meta["threshold_rule"] == "fixed:0.5"
    assert meta["calibrated_from"]["threshold"] == pytest.approx(0.42)
    assert meta["calibrated_from"]["n"] == 72
    # never overwrite, never write over the source
    assert main(["calibrate", "--model", str(fitted_model), "--manifest", str(local), "--out", str(new)]) != 0
    assert main(["calibrate", "--model", str(fitted_model), "--manifest", str(local), "--out", str(fitted_model)]) != 0
    # predict() applies the stored calibration
    model, m2 = load_model(new)
    imgs = np.asarray(load_images([str(p) for p in pd.read_csv(test)["path"][:5]], SIZE, cache_dir=tmp_path / "cache"))
    raw = predict(model, m2, imgs, calibrated=False)
    assert np.allclose(predict(model, m2, imgs), apply_calibration(raw, m2["calibration"]))
    # evaluate on other slides of the same hospital: before (raw, 0.42) vs after (calibrated, re-fitted threshold)
    res = run_evaluate(
        model=str(new),
        manifest=str(test),
        out=str(tmp_path / "ev"),
        n_boot=100,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    b, a = res.metrics["before_calibration"], res.metrics["overall"]
    assert b["threshold"] == pytest.approx(0.42)
    assert b["auc"]["value"] == pytest.approx(a["auc"]["value"], abs=1e-6)  # Platt is monotone: ranking unchanged
    assert a["balanced_accuracy"]["value"] > b["balanced_accuracy"]["value"]
    assert a["brier"]["value"] < b["brier"]["value"]
    assert "biopsy_before_calibration" in res.metrics
    assert "before calibration (all images)" in res.table().index


def test_local_label_curve_is_slide_disjoint():
    rng = np.random.default_rng(0)
    n = 400
    slides = np.repeat([f"s{i}" for i in range(10)], n // 10)
    y = (rng.random(n) < 0.4).astype(int)
    raw = 1 / (1 + np.exp(-(2.5 * y - 2.0 + rng.normal(0, 1, n))))  # ranks well, probabilities too low
    pred = pd.DataFrame({"slide": slides, "y": y, "prob_raw": raw})
    curve = local_label_curve(pred, sizes=(10, 50), repeats=5, source_threshold=0.5)
    assert not set(curve.attrs["pool_slides"]) & set(curve.attrs["test_slides"])
    assert set(curve["n"]) == {0, 10, 50}
    shipped = curve[curve.n == 0].iloc[0]
    fitted = curve[curve.n == 50]
    assert fitted["balanced_accuracy"].median() > shipped["balanced_accuracy"]
    assert fitted["biopsy_mae_prob"].median() < shipped["biopsy_mae_prob"]


# ------------------------------------------------------------------------------------------- metrics
def test_bootstrap_ci_resamples_whole_slides():
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.4, 0.6])
    one = U.bootstrap_ci(y, p, metric="auc", groups=["a"] * 6, n_boot=50)
    assert one["auc"]["ci_low"] == one["auc"]["ci_high"] == one["auc"]["value"] == 1.0  # one slide: no spread
    acc = U.bootstrap_ci(
        y, p, metric=lambda yy, pp: float(np.mean((pp >= 0.5) == yy)), groups=list("aabbcc"), n_boot=50
    )
    assert acc["value"]["value"] == 1.0 and acc["value"]["n_valid"] == 50
    y2 = np.r_[np.zeros(20), np.ones(20)].astype(int)
    p2 = np.random.default_rng(0).random(40)
    ci = U.bootstrap_ci(y2, p2, groups=np.repeat(np.arange(8), 5), n_boot=300)
    assert set(M.METRICS) <= set(ci)
    assert ci["accuracy"]["ci_low"] < ci["accuracy"]["value"] < ci["accuracy"]["ci_high"]
    with pytest.raises(ValueError, match="one per image"):
        U.bootstrap_ci(y2, p2, groups=[0, 1])


def test_choose_threshold_rules():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9])
    t = M.choose_threshold(y, p, "youden")
    assert p[y == 0].max() < t <= p[y == 1].min()  # separable: Youden separates perfectly
    y3 = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    p3 = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    ts = M.choose_threshold(y3, p3, "sensitivity:1.0")
    assert ts == pytest.approx(0.3) and np.all(p3[y3 == 1] >= ts)
    assert M.choose_threshold(y3, p3, "fixed:0.25") == 0.25
    with pytest.raises(ValueError, match="both positive and negative"):
        M.choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="unknown threshold rule"):
        M.choose_threshold(y3, p3, "best")
    oof = pd.DataFrame({"path": ["a", "b", "a", "b"], "y": [0, 1, 0, 1], "prob": [0.1, 0.7, 0.3, 0.9]})
    assert 0.2 < M.threshold_from_oof(oof) <= 0.8


def test_fit_calibration_improves_brier_and_isotonic_is_monotone():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(int)
    raw = 1 / (1 + np.exp(-(3 * y - 0.5 + rng.normal(0, 1, 500))))  # overconfident positives
    for method in ("platt", "isotonic"):
        cal = fit_calibration(y, raw, method)
        p = apply_calibration(raw, cal)
        assert np.mean((p - y) ** 2) < np.mean((raw - y) ** 2), method
        order = np.argsort(raw)
        assert np.all(np.diff(p[order]) >= -1e-12), method
    with pytest.raises(ValueError, match="positive and negative"):
        fit_calibration([0, 0, 0], [0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------- biopsy
def _preds():
    return pd.DataFrame(
        {
            "slide": ["a"] * 4 + ["b"] * 4 + ["c"] * 2,
            "center": ["X"] * 8 + ["Y"] * 2,
            "y": [1, 1, 1, 0, 0, 0, 0, 1, 0, 0],
            "prob": [0.9, 0.6, 0.4, 0.2, 0.1, 0.3, 0.6, 0.7, 0.2, 0.2],
        }
    )


def test_biopsy_table_and_agreement_by_hand():
    t = B.biopsy_table(_preds(), threshold=0.5)
    assert list(t.index) == ["a", "b", "c"] and list(t["n"]) == [4, 4, 2]
    assert t.loc["a", "true_share"] == 0.75 and t.loc["a", "pred_share_hard"] == 0.5
    assert t.loc["a", "pred_share_prob"] == pytest.approx(0.525)
    assert t.loc["b", "diff_hard"] == pytest.approx(0.5 - 0.25)
    assert t.loc["c", "center"] == "Y"
    ag = B.agreement(t)
    assert ag.loc["share of hard calls", "mae"] == pytest.approx(np.mean([0.25, 0.25, 0.0]))
    assert ag.loc["mean probability", "mae"] == pytest.approx(np.mean([0.225, 0.175, 0.2]))
    perfect = B.agreement(B.biopsy_table(_preds().assign(prob=lambda d: d["y"].astype(float))))
    assert perfect.loc["mean probability", "icc"] == pytest.approx(1.0)
    assert perfect.loc["mean probability", "mae"] == 0
    # seeds: several rows per path are averaged first
    rep = pd.concat([_preds().assign(path=[f"p{i}" for i in range(10)], seed=s) for s in (0, 1)])
    rep.loc[rep.seed == 1, "prob"] = 1 - rep.loc[rep.seed == 1, "prob"]
    assert B.biopsy_table(rep)["pred_share_prob"].tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_biopsy_rules_and_calls():
    m = B.parse_rule("oxford_m")
    assert list(m.call([0.5, 0.51, 0.0])) == ["M0", "M1", "M0"]  # M1 only when MORE than half
    gs = B.parse_rule("gs_bands")
    assert list(gs.call([0.05, 0.1, 0.15, 0.25])) == ["≤10%", "≤10%", "10%–20%", ">20%"]
    assert B.parse_rule("cuts:0.25,0.5").labels == ("≤25%", "25%–50%", ">50%")
    for bad in ("cuts:0.5,0.2", "cuts:1.5", "percent"):
        with pytest.raises(ValueError):
            B.parse_rule(bad)
    ro = B.readouts(_preds(), threshold=0.5, rule="oxford_m")
    assert list(ro.calls["true_call"]) == ["M1", "M0", "M0"]
    assert list(ro.calls["call_hard"]) == ["M0", "M0", "M0"]
    assert ro.call_metrics.loc["share of hard calls", "accuracy"] == pytest.approx(2 / 3)
    conf = B.call_confusion(ro.calls, "hard")
    assert conf.loc["M1", "M0"] == 1 and conf.to_numpy().sum() == 3
    json.dumps(ro.to_dict())  # serialisable for metrics.json
    with pytest.raises(ValueError, match="no 'patient' column"):
        B.biopsy_table(_preds(), by="patient")


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_train_on_some_slides_evaluate_on_others(shared_data, tmp_path):
    """glomeruli-pas: a tiny 32 px model fine-tuned (`glomlib finetune`) on some slides, evaluated with
    `glomlib evaluate` on other slides (RGB PNGs of varying size), then re-calibrated on part of them."""
    rows = []
    root = shared_data / "Patches" / "Raw" / "Images"
    for label in ("GS", "nonGS"):
        for p in sorted((root / label).glob("*.png")):
            slide = p.stem.rsplit("-", 1)[0]
            rows.append({"path": str(p), "label": label, "slide": slide, "center": slide.split("_")[0]})
    df = pd.DataFrame(rows)
    gs_slides = sorted(df.loc[df.label == "GS", "slide"].unique())
    train_slides, eval_slides = gs_slides[:8], gs_slides[8:14]
    train = df[df.slide.isin(train_slides)].groupby(["slide", "label"]).head(4)
    ev = df[df.slide.isin(eval_slides)].groupby(["slide", "label"]).head(5)
    train.to_csv(tmp_path / "train.csv", index=False)
    ev.to_csv(tmp_path / "eval.csv", index=False)
    assert (
        main(
            [
                "finetune",
                "--init",
                "scratch",
                "--data",
                str(tmp_path / "train.csv"),
                "--out",
                str(tmp_path / "ft"),
                "--backbone",
                "resnet18",
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--folds",
                "2",
                "--positive-label",
                "GS",
                "--progress",
                "false",
                "--min-steps",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    meta = read_model_meta(tmp_path / "ft" / "model.safetensors")
    assert meta["threshold_rule"].startswith("youden")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "ft"),
                "--manifest",
                str(tmp_path / "eval.csv"),
                "--out",
                str(tmp_path / "ev"),
                "--n-boot",
                "100",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert len(pred) == len(ev) and not set(pred.slide) & set(train_slides)
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["threshold"] == pytest.approx(meta["threshold"])
    assert 0 <= doc["overall"]["auc"]["value"] <= 1 and doc["overall"]["n"] == len(ev)
    assert set(doc["per_center_ci"]) == set(ev["center"])
    assert doc["biopsy"]["rule"] == "gs_bands" and doc["biopsy"]["agreement"]["mean probability"]["n_biopsies"] == 6
    local = ev[ev.slide.isin(eval_slides[:3])]
    local.to_csv(tmp_path / "local.csv", index=False)
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(tmp_path / "ft" / "model.safetensors"),
                "--manifest",
                str(tmp_path / "local.csv"),
                "--out",
                str(tmp_path / "cal.safetensors"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert read_model_meta(tmp_path / "cal.safetensors")["calibrated_from"]["n"] == len(local)


def test_runs_table_compares_runs_per_biopsy():
    a = _preds().assign(label=lambda d: np.where(d["y"] == 1, "GS", "nonGS"))
    perfect = a.assign(prob=a["y"].astype(float))
    t = B.runs_table({"perfect": perfect, "noisy": a})
    assert t.loc[("perfect", "mean probability"), "mae"] == 0
    assert t.loc[("noisy", "share of hard calls"), "mae"] == pytest.approx(np.mean([0.25, 0.25, 0.0]))
    assert "call accuracy (gs_bands)" in t.columns  # GS -> %GS bands
