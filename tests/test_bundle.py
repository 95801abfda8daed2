"""glomlib.models.bundle: several fine-tuned models as one file (round trip, checksums, combining, accepted by
predict / evaluate / calibrate), test-time augmentation, and the per-biopsy read-out with its uncertainty."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from glomlib.evaluate.biopsy_ci import MIN_GLOMERULI, biopsy_ci
from glomlib.evaluate.predict import predict, predict_manifest
from glomlib.models.bundle import DEFAULT_COMBINE, TTA, BundleModel, combine_probs, pack_files, save_bundle
from glomlib.models.files import ModelFileError, load_model, save_model
from glomlib.models.heads import build_classifier

SIZE = 16


def _meta(**kw):
    meta = {"backbone": "efficientnet_lite0", "image_size": SIZE, "mean": [0.485, 0.456, 0.406]}
    meta.update(std=[0.229, 0.224, 0.225], positive_label="M1", negative_label="M0", threshold=0.5, init="scratch")
    return {**meta, **kw}


def _images(n=12, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three member files in a fake run: two fold models (one float16, as fine-tuning stores them) + a final."""
    run = tmp_path_factory.mktemp("run")
    paths = []
    for i, name in enumerate(("seed0-fold0", "seed0-fold1", None)):
        torch.manual_seed(i)
        net = build_classifier("efficientnet_lite0").eval()
        with torch.no_grad():
            net.head.bias.fill_(i - 1.0)  # members that disagree
        path = run / (f"checkpoints/{name}/model.safetensors" if name else "model.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(net, _meta(**({"fold": i, "seed": 0} if name else {})), path, torch.float16 if i == 0 else None)
        paths.append(path)
    bundle = pack_files(paths, run / "bundle.safetensors", meta_from=paths[-1])
    return run, paths, bundle


def test_round_trip_members_and_checksums(members):
    run, paths, bundle = members
    model, meta = load_model(bundle)
    assert isinstance(model, BundleModel) and not model.training and len(model.members) == 3
    assert [m["name"] for m in meta["members"]] == ["seed0-fold0", "seed0-fold1", "final"]
    assert all(len(m["sha256"]) == 64 for m in meta["members"]) and meta["combine"] == DEFAULT_COMBINE
    with safe_open(str(bundle), framework="pt") as f:  # a float16 member is stored as it was
        assert f.get_slice("members.0.head.weight").get_dtype() == "F16"
    from glomlib.slides.export import model_settings  # slides export reads the bundle like a model file

    assert model_settings(bundle) == {"threshold": 0.5, "positive_label": "M1", "calibrated": False}
    for net, p in zip(model.members, paths):
        single, _ = load_model(p)
        for k, v in single.state_dict().items():
            assert torch.equal(v, net.state_dict()[k]), k


def test_probability_is_mean_of_members(members, tmp_path):
    _, paths, bundle = members
    model, meta = load_model(bundle)
    imgs = _images()
    each = np.stack([predict(load_model(p)[0], meta, imgs) for p in paths], axis=1)
    assert each.std(axis=1).max() > 0.05  # the members really differ
    assert np.allclose(predict(model, meta, imgs), combine_probs(each, DEFAULT_COMBINE), atol=1e-5)
    z = np.log(each) - np.log1p(-each)
    expected = {"mean_prob": each.mean(axis=1), "mean_logit": 1 / (1 + np.exp(-z.mean(axis=1)))}
    sds = [(m.state_dict(), {"name": f"m{i}"}) for i, m in enumerate(model.members)]
    for how, want in expected.items():
        lm, lmeta = load_model(save_bundle(sds, {**meta, "combine": how}, tmp_path / f"{how}.safetensors"))
        assert lmeta["combine"] == how and np.allclose(predict(lm, lmeta, imgs), want, atol=1e-5)
        assert np.allclose(combine_probs(each, how), want)


def _tamper(src, dst):
    sd = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        stored = f.metadata()
    sd["members.1.head.bias"] = sd["members.1.head.bias"] + 1.0  # same shape: only the member's sha256 sees it
    save_file(sd, str(dst), metadata=stored)
    return dst


def test_tampered_member_refused_exit_5(members, tmp_path, tiny_manifest):
    from glomlib.cli import main

    bad = _tamper(members[2], tmp_path / "bundle.safetensors")
    with pytest.raises(ModelFileError, match=r"member 1 \(seed0-fold1\).*sha256"):
        load_model(bad)
    assert (
        main(["predict", "--model", str(bad), "--manifest", str(tiny_manifest), "--out", str(tmp_path / "p.csv")]) == 5
    )


def test_predict_evaluate_calibrate_accept_bundle(members, tmp_path, make_manifest):
    from glomlib.evaluate.calibrate import calibrate_model
    from glomlib.evaluate.external import run_evaluate

    bundle = members[2]
    man = make_manifest(n_slides=4, per_slide=4, size=SIZE)
    res = predict_manifest(bundle, man, tmp_path / "pred.csv", device="cpu")
    assert len(res) == 16 and res["prob"].between(0, 1).all()
    ev = run_evaluate(model=str(bundle), manifest=str(man), out=str(tmp_path / "ev"), n_boot=20, device="cpu")
    b = ev.metrics["bundle"]
    assert len(b["member_auc"]) == 3 and b["member_auc_spread"]["min"] <= b["member_auc_spread"]["max"]
    cols = [f"prob_member_{i}" for i in range(3)]
    assert np.allclose(ev.predictions["prob_raw"], combine_probs(ev.predictions[cols], DEFAULT_COMBINE))
    ci = pd.read_csv(tmp_path / "ev" / "biopsy_ci.csv")
    assert len(ci) == 4 and ci["too_few"].all()  # 4 glomeruli per biopsy < 8
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["biopsy_ci"]["min_glomeruli"] == MIN_GLOMERULI
    out = tmp_path / "calibrated.safetensors"
    calibrate_model(bundle, man, out, device="cpu")
    cm, cmeta = load_model(out)
    assert isinstance(cm, BundleModel) and cmeta["calibration"]["method"] == "platt" and len(cmeta["members"]) == 3


def test_tta_is_invariant_to_flips_and_rotations(members):
    model, meta = load_model(members[1][0])
    imgs = _images(6)
    p = predict(model, meta, imgs, tta=True)
    rotated = np.ascontiguousarray(np.rot90(imgs, 1, axes=(1, 2))[:, :, ::-1])
    assert np.allclose(p, predict(model, meta, rotated, tta=True), atol=1e-5)
    assert not np.allclose(p, predict(model, meta, imgs))  # TTA changes the prediction
    assert isinstance(TTA(model), torch.nn.Module)


def test_biopsy_ci_contains_estimate_and_flags_few_glomeruli():
    rng = np.random.default_rng(0)
    n = {"big": 40, "small": MIN_GLOMERULI - 1}
    biopsy = np.repeat(list(n), list(n.values()))
    y = rng.integers(0, 2, len(biopsy))
    members = np.clip(0.5 * y[:, None] + rng.uniform(0, 0.5, (len(biopsy), 3)), 0, 1)
    cal = {"method": "platt", "coef": 1.5, "intercept": -0.2}
    t = biopsy_ci(members, biopsy, 0.5, y=y, calibration=cal, n_boot=400).set_index("biopsy")
    assert t.loc["small", "too_few"] and not t.loc["big", "too_few"]
    for est in ("hard", "prob"):
        assert (t[f"{est}_lo"] <= t[f"{est}_share"]).all() and (t[f"{est}_share"] <= t[f"{est}_hi"]).all()
        assert (t[f"{est}_hi"] > t[f"{est}_lo"]).all()
    single = biopsy_ci(members[:, :1], biopsy, 0.5, n_boot=400).set_index("biopsy")
    assert single.loc["big", "prob_share"] == pytest.approx(members[biopsy == "big", 0].mean())
