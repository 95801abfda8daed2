"""Resume never rewrites history (glomlib.train.simclr and glomlib.train.finetune): only an unfinished run with
the same data and training settings continues; finished artefacts and provenance.json are never replaced; a
failed run says so in run.json; the same seed on the same machine gives the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from glomlib.cli import EXIT_USAGE, main
from glomlib.core.io import ResumeError, read_run_status
from glomlib.train import finetune as ft
from glomlib.train import simclr as ssl
from glomlib.train.finetune import cv as ft_cv
from glomlib.train.simclr import run as ssl_run

SSL_ARGS = [
    "--progress",
    "false",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--knn-every",
    "0",
    "--proj-hidden-dim",
    "32",
    "--proj-out-dim",
    "16",
    "--precision",
    "fp32",
    "--backbone",
    "resnet18",
    "--ssl-init",
    "scratch",
    "--freeze-bn",
    "false",
    "--final-probe",
    "false",
    "--channels-last",
    "false",
    "--warmup-epochs",
    "0",
    "--folds",
    "2",
]


def _snapshot(run: Path, names) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    from conftest import build_tiny_dataset

    base = tmp_path_factory.mktemp("resume")
    a = build_tiny_dataset(base / "a", n_slides=6, per_slide=4, size=32, seed=0)
    b = build_tiny_dataset(base / "b", n_slides=6, per_slide=4, size=32, seed=1)  # other images
    return a, b


def test_ssl_resume_of_a_finished_run_with_other_data_and_epochs_is_refused(manifests, tmp_path, capsys):
    a, b = manifests
    out = tmp_path / "ssl"
    assert main(["ssl", "--out", str(out), "--data", str(a), "--epochs", "1", *SSL_ARGS]) == 0
    assert read_run_status(out)["status"] == "finished"
    kept = _snapshot(out, ["encoder.safetensors", "provenance.json", "config.json", "checkpoint.pt"])
    capsys.readouterr()
    rc = main(["ssl", "--out", str(out), "--resume", "--data", str(b), "--epochs", "2", *SSL_ARGS])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    assert "the run is finished (encoder.safetensors)" in err
    assert "epochs: 1 -> 2" in err and "data fingerprint: " in err and "Traceback" not in err
    assert _snapshot(out, kept) == kept  # nothing rewritten


def test_ssl_failed_run_is_marked_and_resumes_only_with_same_data_and_settings(manifests, tmp_path, monkeypatch):
    a, b = manifests
    out = tmp_path / "ssl"
    kw = dict(
        data=str(a),
        out=str(out),
        backbone="resnet18",
        ssl_init="scratch",
        image_size=32,
        batch_size=8,
        epochs=1,
        knn_every=0,
        proj_hidden_dim=32,
        proj_out_dim=16,
        precision="fp32",
        channels_last=False,
        freeze_bn=False,
        final_probe=False,
        warmup_epochs=0,
        progress=False,
        folds=2,
    )
    real = ssl.pretrain

    def crash(*args, **kwargs):
        raise MemoryError("out of memory in epoch 1")

    monkeypatch.setattr(ssl_run, "pretrain", crash)
    with pytest.raises(MemoryError):
        ssl.run_ssl(ssl.SSLConfig.from_params(**kw))
    st = read_run_status(out)
    assert st["status"] == "failed" and "out of memory" in st["error"]
    assert f"glomlib ssl --out {out} --resume true" in st["what_now"] and "new out folder" in st["what_now"]
    prov = (out / "provenance.json").read_bytes()
    monkeypatch.setattr(ssl_run, "pretrain", real)
    with pytest.raises(ResumeError) as ei:
        ssl.run_ssl(ssl.SSLConfig.from_params(**{**kw, "data": str(b), "lr": 0.01, "resume": True}))
    msg = str(ei.value)
    assert "lr: 5e-05 -> 0.01" in msg or "lr: " in msg and "-> 0.01" in msg
    assert "data fingerprint:" in msg and "finished" not in msg
    res = ssl.run_ssl(ssl.SSLConfig.from_params(**{**kw, "resume": True, "device": "cpu"}))  # device may change
    assert res.encoder_path.is_file() and read_run_status(out)["status"] == "finished"
    assert (out / "provenance.json").read_bytes() == prov  # written once, when the data was first read


def _ft_params(manifest, out, **kw):
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
        precision="fp32",
    )
    p.update(kw)
    return p


def test_finetune_resume_after_labels_changed_is_refused_and_keeps_the_record(manifests, tmp_path, capsys):
    a, _ = manifests
    out = tmp_path / "ft"
    ft.run_finetune(**_ft_params(a, out, final_model=False))
    kept = _snapshot(out, ["metrics.json", "provenance.json", "predictions.csv"])
    relabelled = tmp_path / "relabelled"
    relabelled.mkdir()
    df = pd.read_csv(a)
    for col in ("path", "mask"):
        df[col] = [str(a.parent / p) for p in df[col]]
    df.loc[0, "label"] = "M0" if df.loc[0, "label"] == "M1" else "M1"
    df.to_csv(relabelled / "manifest.csv", index=False)
    rc = main(
        [
            "finetune",
            "--data",
            str(relabelled / "manifest.csv"),
            "--out",
            str(out),
            "--resume",
            "true",
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
            "--seeds",
            "0",
            "--positive-label",
            "M1",
            "--patience",
            "1",
            "--progress",
            "false",
            "--init",
            "scratch",
            "--final-model",
            "false",
            "--precision",
            "fp32",
        ]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    assert "finished (metrics.json)" in err and "data fingerprint: " in err, err
    assert _snapshot(out, kept) == kept


def test_finetune_interrupted_run_resumes_only_with_the_same_settings(manifests, tmp_path, monkeypatch):
    a, _ = manifests
    out = tmp_path / "ft"
    real = ft.train_one

    def crash(*args, **kw):
        if kw.get("desc", "").endswith("f1"):
            raise RuntimeError("killed during fold 1")
        return real(*args, **kw)

    monkeypatch.setattr(ft_cv, "train_one", crash)
    with pytest.raises(RuntimeError):
        ft.run_finetune(**_ft_params(a, out, final_model=False))
    st = read_run_status(out)
    assert st["status"] == "failed" and "--resume true" in st["what_now"]
    prov = (out / "provenance.json").read_bytes()
    monkeypatch.setattr(ft_cv, "train_one", real)
    with pytest.raises(ResumeError, match=r"epochs: 1 -> 3"):
        ft.run_finetune(**_ft_params(a, out, final_model=False, resume=True, epochs=3))
    res = ft.run_finetune(**_ft_params(a, out, final_model=False, resume=True))
    assert len(res.per_fold) == 2 and read_run_status(out)["status"] == "finished"
    assert (out / "provenance.json").read_bytes() == prov


def test_same_seed_same_machine_same_predictions(manifests, tmp_path):
    """A tiny fine-tune run twice: the out-of-fold predictions and the saved model are bit-identical."""
    a, _ = manifests
    kw = dict(epochs=2, device="cpu", final_model=False)
    r1 = ft.run_finetune(**_ft_params(a, tmp_path / "one", **kw))
    r2 = ft.run_finetune(**_ft_params(a, tmp_path / "two", **kw))
    p1 = pd.read_csv(r1.out / "predictions.csv", keep_default_na=False)
    p2 = pd.read_csv(r2.out / "predictions.csv", keep_default_na=False)
    assert p1["prob"].nunique() > 1  # a real model, not a constant
    pd.testing.assert_frame_equal(p1, p2, check_exact=True)
    m1, m2 = (json.loads((r.out / "metrics.json").read_text()) for r in (r1, r2))
    assert [f["auc"] for f in m1["per_fold"]] == [f["auc"] for f in m2["per_fold"]]
