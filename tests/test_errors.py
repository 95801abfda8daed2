"""glomlib.cli: anticipated failures become one clear message and a documented exit code (``--debug`` shows
the traceback); ``data check`` reports what would break cross-validation; model files are validated on load."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from glomlib.cli import EXIT_CODES, EXIT_DATA, EXIT_DISK_FULL, EXIT_INTERNAL, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, main


def _run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.err


def _manifest(tmp_path, write_png, slides, labels, name="m.csv", per_slide=2):
    rng = np.random.default_rng(0)
    rows = []
    for s in range(slides):
        for k in range(per_slide):
            p = write_png(tmp_path / "img" / f"s{s}-{k}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            rows.append({"path": str(p), "label": labels(s, k), "slide": f"s{s}"})
    m = tmp_path / name
    pd.DataFrame(rows).to_csv(m, index=False)
    return m


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from glomlib.models.files import save_model
    from glomlib.models.heads import build_classifier

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "model.safetensors"
    save_model(
        build_classifier("resnet18").eval(),
        {
            "backbone": "resnet18",
            "image_size": 16,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "positive_label": "M1",
            "negative_label": "M0",
            "threshold": 0.5,
        },
        path,
    )
    return path


def test_help_documents_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code, text in EXIT_CODES.items():
        assert f"{code:>3}  {text}" in out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, f"exit code {code} not documented in README"


# ------------------------------------------------------------------------------------------- data problems
def test_empty_manifest(tmp_path, capsys):
    m = tmp_path / "empty.csv"
    m.write_text("path,label,slide\n")
    rc, err = _run(capsys, "data", "check", str(m))
    assert rc == EXIT_DATA and "no rows" in err
    rc, err = _run(capsys, "finetune", "--data", str(m), "--out", str(tmp_path / "run"), "--init", "scratch")
    assert rc == EXIT_DATA and "no rows" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_single_class_manifest(tmp_path, write_png, capsys):
    m = _manifest(tmp_path, write_png, 6, lambda s, k: "M1")
    rc, err = _run(capsys, "data", "check", str(m), "--positive-label", "M1", "--negative-label", "M0")
    assert rc == EXIT_DATA and "only one class" in err, err
    rc, err = _run(
        capsys,
        "finetune",
        "--data",
        str(m),
        "--out",
        str(tmp_path / "run"),
        "--init",
        "scratch",
        "--positive-label",
        "M1",
        "--backbone",
        "resnet18",
        "--image-size",
        "16",
        "--progress",
        "false",
    )
    assert rc == EXIT_DATA and "only one class" in err and "Traceback" not in err, err


def test_fewer_slides_than_folds_and_class_on_too_few_slides(tmp_path, write_png, capsys):
    m = _manifest(tmp_path, write_png, 3, lambda s, k: "M1" if k else "M0")
    rc, err = _run(capsys, "data", "check", str(m), "--positive-label", "M1")
    assert rc == EXIT_DATA and "only 3 slides to split into 5 folds" in err
    assert _run(capsys, "data", "check", str(m), "--folds", "3", "--positive-label", "M1")[0] == 0
    m2 = _manifest(tmp_path, write_png, 6, lambda s, k: "M1" if s < 2 and k else "M0", name="m2.csv")
    rc, err = _run(capsys, "data", "check", str(m2), "--positive-label", "M1")
    assert rc == EXIT_DATA and "positive class (y=1) occurs in only 2 slide(s), fewer than n_folds=5" in err
    rc, err = _run(
        capsys,
        "finetune",
        "--data",
        str(m2),
        "--out",
        str(tmp_path / "run"),
        "--init",
        "scratch",
        "--positive-label",
        "M1",
        "--backbone",
        "resnet18",
        "--image-size",
        "16",
        "--progress",
        "false",
    )
    assert rc == EXIT_DATA and "occurs in only 2 slide(s)" in err and "Traceback" not in err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "new out folder" in run["what_now"]
    # the half-made folder of the failed run does not block a re-run (fixed data, 2 folds) with a new --out
    from conftest import build_tiny_dataset

    m3 = build_tiny_dataset(tmp_path / "fixed", n_slides=4, per_slide=4, size=16)
    rc, err = _run(
        capsys,
        "finetune",
        "--data",
        str(m3),
        "--out",
        str(tmp_path / "run2"),
        "--init",
        "scratch",
        "--positive-label",
        "M1",
        "--backbone",
        "resnet18",
        "--image-size",
        "16",
        "--progress",
        "false",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--final-model",
        "false",
        "--precision",
        "fp32",
    )
    assert rc == 0, err


# ------------------------------------------------------------------------------------------------- outputs
@pytest.fixture
def unlabeled(tmp_path, write_png):
    return _manifest(tmp_path, write_png, 2, lambda s, k: "", name="u.csv")


def test_existing_out_is_refused_and_kept(model_file, unlabeled, tmp_path, capsys):
    out = tmp_path / "p.csv"
    out.write_text("precious\n")
    rc, err = _run(capsys, "predict", "--model", str(model_file), "--manifest", str(unlabeled), "--out", str(out))
    assert rc == EXIT_OUTPUT and "already exists" in err and out.read_text() == "precious\n"


def test_read_only_out(model_file, unlabeled, tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(kw.get("dir", "")))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rc, err = _run(
        capsys, "predict", "--model", str(model_file), "--manifest", str(unlabeled), "--out", str(tmp_path / "p.csv")
    )
    assert rc == EXIT_OUTPUT and "Read-only file system" in err and "not writable" in err and "Traceback" not in err


def test_full_disk_names_path_and_free_space(model_file, unlabeled, tmp_path, capsys, monkeypatch):
    def full(self, path, *a, **kw):
        Path(path).write_bytes(b"path,prob\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "p.csv"
    rc, err = _run(capsys, "predict", "--model", str(model_file), "--manifest", str(unlabeled), "--out", str(out))
    assert rc == EXIT_DISK_FULL and "disk full" in err and str(out) in err and "free on that disk" in err
    assert not out.exists() and not list(tmp_path.glob(".p.csv*"))


# ------------------------------------------------------------------------------------------ model files
@pytest.mark.parametrize(
    "change, why",
    [
        ({"std": [0.25, 0.0, 0.25]}, "std="),
        ({"std": [0.25, 0.25]}, "std="),
        ({"mean": ["a", 0.5, 0.5]}, "mean="),
        ({"image_size": -16}, "image_size="),
        ({"image_size": 0}, "image_size="),
        ({"positive_label": ""}, "positive_label="),
        ({"threshold": 7}, "threshold="),
        ({"backbone": "vgg"}, "backbone="),
        ({"stain_normalize": "bogus"}, "stain_normalize="),  # issue 19 defect 6: was exit 70
    ],
)
def test_tampered_model_metadata_is_refused(model_file, unlabeled, tmp_path, capsys, change, why):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from glomlib.models.files import ModelFileError, load_model

    with safe_open(str(model_file), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in change.items()})
    bad = tmp_path / "tampered.safetensors"
    save_file(load_file(str(model_file)), str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match=why):
        load_model(bad)
    rc, err = _run(
        capsys, "predict", "--model", str(bad), "--manifest", str(unlabeled), "--out", str(tmp_path / "p.csv")
    )
    assert rc == EXIT_MODEL and why in err and not (tmp_path / "p.csv").exists()


def test_nan_weights_and_wrong_shapes_are_refused(model_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from glomlib.models.files import ModelFileError, load_model

    with safe_open(str(model_file), framework="pt") as f:
        meta = dict(f.metadata())
    sd = load_file(str(model_file))
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 4)
    nan = {**sd, key: sd[key].clone().fill_(float("nan"))}
    save_file(nan, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(tmp_path / "nan.safetensors")
    small = {**sd, key: sd[key][:1].clone()}
    save_file(small, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(tmp_path / "shape.safetensors")


# ---------------------------------------------------------------------------------------- debug / bugs
def test_debug_shows_the_traceback_and_bugs_say_so(model_file, unlabeled, tmp_path, capsys, monkeypatch):
    import glomlib.evaluate.predict as P

    out = tmp_path / "p.csv"
    out.write_text("x")
    rc, err = _run(
        capsys, "--debug", "predict", "--model", str(model_file), "--manifest", str(unlabeled), "--out", str(out)
    )
    assert rc == EXIT_OUTPUT and "Traceback (most recent call last)" in err and "FileExistsError" in err

    def bug(*a, **kw):
        return 1 / 0

    monkeypatch.setattr(P, "predict_manifest", bug)
    rc, err = _run(
        capsys, "predict", "--model", str(model_file), "--manifest", str(unlabeled), "--out", str(tmp_path / "q.csv")
    )
    assert rc == EXIT_INTERNAL and "unexpected ZeroDivisionError" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as ei:  # a missing option: argparse's usage error
        main(["predict", "--model", str(model_file), "--out", "x.csv"])
    assert ei.value.code == EXIT_USAGE


def test_unreadable_images_and_bad_settings_get_their_documented_exit_codes(tmp_path, monkeypatch):
    """A file that is not an image is a data problem (1, naming the file), not a bug (70); a bad
    GLOMLIB_MAX_PIXELS is a configuration error (2)."""
    from glomlib.cli import classify
    from glomlib.data.cache import ImageReadError, decode_image, load_images
    from glomlib.data.pixels import max_pixels

    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="x.png") as e:
        decode_image(str(bad))
    assert classify(e.value) == 1
    with pytest.raises(ImageReadError, match=r"cannot read image .*missing.png") as e:
        decode_image(str(tmp_path / "missing.png"))
    assert classify(e.value) == 1
    with pytest.raises(ImageReadError, match=r"row 1: cannot decode image .*x.png"):
        load_images([str(bad)], 8, cache_dir=tmp_path / "c", hashes=["0" * 64])
    monkeypatch.setenv("GLOMLIB_MAX_PIXELS", "lots")
    with pytest.raises(Exception) as e:
        max_pixels()
    assert classify(e.value) == 2 and "GLOMLIB_MAX_PIXELS" in str(e.value)
