"""glomlib.evaluate.predict: model file round-trip, predict(), and the `glomlib predict` CLI (labelled or not)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from glomlib.evaluate.predict import ModelFileError, load_model, predict, predict_manifest, save_model
from glomlib.models.heads import build_classifier


def _meta(size=16):
    return {
        "backbone": "resnet18",
        "image_size": size,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "positive_label": "M1",
        "negative_label": "M0",
        "init": "scratch",
        "threshold": 0.5,
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier("resnet18")
    model.eval()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(model, _meta(), path)
    return path, model


def test_round_trip_same_outputs(model_file):
    path, model = model_file
    loaded, meta = load_model(path)
    assert meta["backbone"] == "resnet18" and meta["image_size"] == 16 and meta["positive_label"] == "M1"
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    imgs = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    p1 = predict(model, meta, imgs)
    p2 = predict(loaded, meta, imgs)
    assert p1.shape == (5,) and np.allclose(p1, p2, atol=1e-6)
    assert ((p1 >= 0) & (p1 <= 1)).all()
    # other sizes are resized to the model's image size
    big = np.random.default_rng(1).integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    assert predict(loaded, meta, big).shape == (2,)


def test_model_file_has_no_pickle(model_file):
    path, _ = model_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "glomlib.train.finetune.model/1"


def test_bad_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(tmp_path / "junk.safetensors")
    from glomlib.models.backbones import build_backbone
    from glomlib.models.files import save_encoder

    bb, _ = build_backbone("resnet18")
    save_encoder(tmp_path / "encoder.safetensors", bb, {"backbone": "resnet18"})
    with pytest.raises(ModelFileError, match="not a glomlib fine-tuned model"):
        load_model(tmp_path / "encoder.safetensors")


def _unlabeled_manifest(tmp_path, n=6):
    import cv2

    rows = []
    for i in range(n):
        p = tmp_path / "new" / f"x{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8))
        rows.append({"path": f"new/x{i}.png", "slide": f"new{i // 3}"})
    m = tmp_path / "unlabeled.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    return m


def test_cli_unlabeled_manifest_and_no_overwrite(model_file, tmp_path):
    from glomlib.cli import main

    path, _ = model_file
    manifest = _unlabeled_manifest(tmp_path)
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(path), "--manifest", str(manifest), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 6 and {"path", "prob", "pred_label"} <= set(df.columns) and "label" not in df.columns
    assert df["prob"].between(0, 1).all() and set(df["pred_label"]) <= {"M1", "M0"}
    before = out.read_bytes()
    assert main(["predict", "--model", str(path), "--manifest", str(manifest), "--out", str(out)]) == 3  # EXIT_OUTPUT
    assert out.read_bytes() == before
    with pytest.raises(FileExistsError):
        predict_manifest(path, manifest, out)


def test_labelled_manifest_keeps_labels(model_file, tmp_path):
    from conftest import build_tiny_dataset

    path, _ = model_file
    manifest = build_tiny_dataset(tmp_path / "lab", n_slides=2, per_slide=3, size=16)
    res = predict_manifest(path, manifest, tmp_path / "p.csv", device="cpu")
    assert list(res.columns) == ["path", "slide", "prob", "pred_label", "label", "qc"]
    assert set(res["label"]) == {"M1", "M0"}
