"""Issue 19, model side: model files checksummed and checked for consistency, a qc column on predict/evaluate,
calibration labels remembered, exit codes of model problems, one-class manifests for predict/evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from glomlib.cli import EXIT_DATA, EXIT_MODEL, main
from glomlib.models.files import ModelFileError, load_model, read_model_meta, save_model
from glomlib.models.heads import build_classifier

META = {
    "backbone": "resnet18",
    "image_size": 64,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "positive_label": "M1",
    "negative_label": "M0",
    "threshold": 0.5,
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "model.safetensors"
    save_model(
        build_classifier("resnet18").eval(), {**META, "pixel_stats": {"mean": [190.0] * 3, "std": [8.0] * 3}}, path
    )
    return path


def _edit(src: Path, dst: Path, **change) -> Path:
    """Rewrite ``src``'s metadata as someone with a text editor would (the tensors untouched)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in change.items()})
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def _manifest(tmp_path, write_png, images: dict[str, np.ndarray], label="") -> Path:
    rows = [
        {"path": str(write_png(tmp_path / "img" / name, im)), "label": label, "slide": "s0"}
        for name, im in images.items()
    ]
    m = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    return m


def _tissue(seed=0, h=32, w=32):
    return np.random.default_rng(seed).integers(150, 230, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- (10) edited or inconsistent
@pytest.mark.parametrize(
    "change", [{"image_size": 32}, {"positive_label": "M0", "negative_label": "M1"}, {"threshold": 0.9}]
)
def test_edited_metadata_is_refused_with_exit_5(model_file, tmp_path, write_png, capsys, change):
    """Valid-looking but edited metadata (a bigger image_size, swapped label names) once loaded silently."""
    bad = _edit(model_file, tmp_path / "edited.safetensors", **change)
    with pytest.raises(ModelFileError, match="checksum"):
        read_model_meta(bad)
    m = _manifest(tmp_path, write_png, {"a.png": _tissue()})
    rc = main(["predict", "--model", str(bad), "--manifest", str(m), "--out", str(tmp_path / "p.csv")])
    assert rc == EXIT_MODEL and "edited" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_duplicate_label_names_are_refused(model_file, tmp_path):
    bad = _edit(model_file, tmp_path / "dup.safetensors", negative_label="M1")
    with pytest.raises(ModelFileError, match="negative_label='M1' must be a class name other than"):
        load_model(bad)


def test_save_refuses_inconsistent_labels_and_keeps_numeric_names(tmp_path):
    net = build_classifier("resnet18").eval()
    with pytest.raises(ModelFileError, match="negative_label"):
        save_model(net, {**META, "negative_label": "M1"}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    # labels 0/1 with positive label "1": what is saved is what is read back (issue 19, defect 4)
    save_model(net, {**META, "positive_label": "1", "negative_label": "0"}, tmp_path / "num.safetensors")
    assert read_model_meta(tmp_path / "num.safetensors")["positive_label"] == "1"


# ------------------------------------------------------------------------------------------- (7) qc column
def test_qc_column_flags_odd_inputs_and_refuses_tiny_images(model_file, tmp_path, write_png, capsys):
    blank = np.full((32, 32, 3), 240, np.uint8)
    dark = np.random.default_rng(1).integers(10, 40, (32, 32, 3), dtype=np.uint8)  # another stain / exposure
    m = _manifest(
        tmp_path,
        write_png,
        {
            "ok.png": _tissue(),
            "strip.png": _tissue(2, 8, 400),
            "blank.png": blank,
            "dark.png": dark,
            "small.png": _tissue(3, 9, 9),
        },
    )
    assert main(["predict", "--model", str(model_file), "--manifest", str(m), "--out", str(tmp_path / "p.csv")]) == 0
    qc = dict(
        zip(pd.read_csv(tmp_path / "p.csv")["path"].map(lambda p: Path(p).name), pd.read_csv(tmp_path / "p.csv")["qc"])
    )
    assert qc["ok.png"] == "ok" and "extreme aspect ratio" in qc["strip.png"] and "blank tile" in qc["blank.png"]
    assert "far from the training stain" in qc["dark.png"] and "too small" in qc["small.png"]
    assert "qc: 4 of 5 images flagged" in capsys.readouterr().out
    tiny = _manifest(tmp_path / "t", write_png, {"one.png": _tissue(0, 1, 1), "fine.png": _tissue()})
    rc = main(["predict", "--model", str(model_file), "--manifest", str(tiny), "--out", str(tmp_path / "q.csv")])
    assert rc == EXIT_DATA and "one.png (1x1)" in capsys.readouterr().err


def test_rgba_images_give_one_summary_line(model_file, tmp_path, write_png, capsys):
    rgba = {f"{i}.png": np.dstack([_tissue(i), np.full((32, 32), 255, np.uint8)]) for i in range(6)}
    m = _manifest(tmp_path, write_png, rgba)
    assert main(["predict", "--model", str(model_file), "--manifest", str(m), "--out", str(tmp_path / "p.csv")]) == 0
    cap = capsys.readouterr()
    notes = [line for line in (cap.out + cap.err).splitlines() if "alpha" in line]
    assert len(notes) == 1 and "6 note(s)" in notes[0], cap


# ------------------------------------------------- one class only: predict accepts it, evaluate says why no AUC
def test_one_class_manifest_predict_and_evaluate(model_file, tmp_path, write_png, capsys):
    m = _manifest(tmp_path, write_png, {f"{i}.png": _tissue(i) for i in range(4)}, label="M0")
    assert main(["predict", "--model", str(model_file), "--manifest", str(m), "--out", str(tmp_path / "p.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "p.csv")["label"]) == {"M0"}
    rc = main(
        [
            "evaluate",
            "--model",
            str(model_file),
            "--manifest",
            str(m),
            "--out",
            str(tmp_path / "ev"),
            "--n-boot",
            "10",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "AUC" in out and "not defined" in out
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["overall"]["accuracy"]["value"] is not None and any("not defined" in w for w in doc["warnings"])


def test_labels_that_are_not_the_models_classes(model_file, tmp_path, write_png, capsys):
    m = _manifest(tmp_path, write_png, {"a.png": _tissue()}, label="GS")
    rc = main(["evaluate", "--model", str(model_file), "--manifest", str(m), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == EXIT_DATA and "not the model's classes" in err and "--positive-label" not in err


# ------------------------------------------------------------------------ (8) calibration labels remembered
def test_evaluate_warns_when_its_labels_were_used_to_calibrate(model_file, tmp_path, write_png, capsys):
    rows = []
    for i in range(12):
        label = "M1" if i % 2 else "M0"
        p = write_png(tmp_path / "loc" / f"{i}.png", _tissue(i) // (2 if label == "M1" else 1))
        rows.append({"path": str(p), "label": label, "slide": f"s{i % 4}"})
    local = tmp_path / "local.csv"
    pd.DataFrame(rows).to_csv(local, index=False)
    cal = tmp_path / "cal.safetensors"
    assert main(["calibrate", "--model", str(model_file), "--manifest", str(local), "--out", str(cal)]) == 0
    assert len(read_model_meta(cal)["calibrated_from"]["label_images"]) == 12
    capsys.readouterr()
    assert (
        main(
            ["evaluate", "--model", str(cal), "--manifest", str(local), "--out", str(tmp_path / "ev"), "--n-boot", "10"]
        )
        == 0
    )
    assert "12 of 12 evaluated images were used to calibrate" in capsys.readouterr().out
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert any("optimistic" in w for w in doc["warnings"])


# ------------------------------------------------------------------------------------ (11) model exit codes
def test_missing_encoder_and_model_folder_exit_5(model_file, tmp_path, write_png, capsys):
    from glomlib.evaluate.probe import ProbeConfig, probe_encoder

    m = _manifest(tmp_path, write_png, {"a.png": _tissue()})
    with pytest.raises(Exception) as e:
        probe_encoder(ProbeConfig(data=str(m), encoder=str(tmp_path / "nope" / "encoder.safetensors")))
    assert getattr(e.value, "exit_code", None) == EXIT_MODEL
    folder = tmp_path / "somewhere"
    (folder / "checkpoints" / "f0").mkdir(parents=True)
    (folder / "checkpoints" / "f0" / "model.safetensors").write_bytes(model_file.read_bytes())
    rc = main(["predict", "--model", str(folder), "--manifest", str(m), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == EXIT_MODEL and "is a folder" in err and "checkpoints/f0/model.safetensors" in err


def test_predict_help_says_which_columns_are_needed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "label and slide optional" not in text and "slide (required)" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--model", "m", "--manifest", "x", "--out", "y", "--method", "bogus"],
        ["evaluate", "--by", "biopsy"],
        ["evaluate", "--n-boot", "-1"],
        ["probe", "--folds", "1"],
        ["probe", "--init", "glom"],
        ["predict", "--model", "m", "--manifest", "x", "--out", "y", "--batch-size", "0"],
        ["review", "--device", "tpu"],
    ],
)
def test_bad_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_notebook_configs_are_frozen_and_coerce_shell_spellings():
    import dataclasses

    from glomlib.evaluate.compare import CompareConfig
    from glomlib.evaluate.external import ExternalValidationConfig

    cfg = ExternalValidationConfig.from_params(local_sizes="10,20", pool_fraction="0.4")
    assert cfg.local_sizes == [10, 20] and CompareConfig.from_params(inits="glom,imagenet").inits == [
        "glom",
        "imagenet",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_boot = 5
    with pytest.raises(ValueError):
        ExternalValidationConfig.from_params(local_sizes="1,20")


def test_real_patches_pass_qc_and_odd_ones_do_not(shared_data):
    """glomeruli-pas: with the training statistics of half the patches, the other half is all "ok"; a blank
    tile, a strip and a dark (other stain) patch are flagged."""
    from glomlib.data.images import image_size, read_rgb
    from glomlib.evaluate.qc import qc_column
    from glomlib.models.integrity import pixel_stats

    paths = sorted((shared_data / "Patches" / "Raw" / "Images").glob("*/*.png"))[::4]
    images = np.stack([read_rgb(p, 64) for p in paths])
    meta = {"image_size": 64, "pixel_stats": pixel_stats(images[::2])}
    qc = qc_column([image_size(p) for p in paths[1::2]], images[1::2], meta)
    assert set(qc) == {"ok"}, [q for q in qc if q != "ok"][:3]
    odd = np.stack([np.full((64, 64, 3), 245, np.uint8), images[0], images[1] // 10])
    flags = qc_column([(224, 224), (2000, 100), (224, 224)], odd, meta)
    assert "blank tile" in flags[0] and "extreme aspect" in flags[1] and "far from the training" in flags[2]
