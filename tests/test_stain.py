"""Stain robustness options: Reinhard normalisation (glomlib.data.stain), HED augmentation
(glomlib.train.augment.hed_jitter), applied in fine-tuning and, from the model file, when predicting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glomlib.data.stain import REINHARD_TARGET, normalize_stain, reinhard
from glomlib.train.augment import hed_jitter


def _tissue(shade: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.stack(
        [rng.integers(150, 230, (24, 24)), rng.integers(90, 170, (24, 24)), rng.integers(140, 220, (24, 24))], axis=-1
    )
    return np.clip(img - shade, 0, 255).astype(np.uint8)


def test_reinhard_maps_different_stains_to_the_same_colour_statistics():
    import cv2

    pale, dark = _tissue(0), _tissue(90, seed=1)
    out = reinhard(np.stack([pale, dark]))
    assert out.shape == (2, 24, 24, 3) and out.dtype == np.uint8
    labs = [cv2.cvtColor(o, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float) for o in out]
    before = [cv2.cvtColor(o, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float) for o in (pale, dark)]
    gap_before = abs(before[0][:, 0].mean() - before[1][:, 0].mean())
    gap_after = abs(labs[0][:, 0].mean() - labs[1][:, 0].mean())
    assert gap_before > 60 and gap_after < 3
    assert abs(labs[0][:, 0].mean() - REINHARD_TARGET["mean"][0]) < 3
    assert np.array_equal(reinhard(pale), out[0])  # a single image is handled the same way
    assert normalize_stain(pale, "") is pale or np.array_equal(normalize_stain(pale, ""), pale)
    with pytest.raises(ValueError, match="stain_normalize"):
        normalize_stain(pale, "macenko-typo")
    with pytest.raises(ValueError, match="uint8 RGB"):
        reinhard(pale.astype(float))


def test_hed_jitter_changes_stain_not_geometry_and_is_identity_at_zero():
    x = torch.from_numpy(_tissue(20)).permute(2, 0, 1)[None].float().div(255).repeat(4, 1, 1, 1)
    assert hed_jitter(x, 0.0) is x
    same = hed_jitter(x, 1e-7, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-4)  # OD -> HED -> OD round trip
    g = torch.Generator().manual_seed(0)
    y = hed_jitter(x, 0.08, g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float((y - x).abs().mean()) > 0.005
    assert not torch.allclose(y[0], y[1])  # each image gets its own perturbation
    # per image, pixel order is preserved for the dominant channel (a colour change, not a spatial one)
    r = torch.corrcoef(torch.stack([x[0].mean(0).flatten(), y[0].mean(0).flatten()]))[0, 1]
    assert r > 0.9


def test_finetune_leave_one_centre_out_with_stain_options(tiny_manifest, tmp_path):
    """cv=centre: each test fold is one whole centre; stain options are recorded and the model file asks
    predict() to normalise."""
    from glomlib.evaluate.predict import load_model
    from glomlib.train.finetune import run_finetune

    res = run_finetune(
        data=str(tiny_manifest),
        out=str(tmp_path / "loco"),
        init="scratch",
        backbone="resnet18",
        image_size=16,
        epochs=1,
        folds=2,
        cv="centre",
        positive_label="M1",
        progress=False,
        stain_augment=0.05,
        stain_normalize="reinhard",
        min_steps=0,
        device="cpu",
    )
    p = res.predictions
    assert (p.groupby("fold")["center"].nunique() == 1).all() and p.groupby("center")["fold"].nunique().eq(1).all()
    assert set(p["center"]) == {"A", "B"}
    _, meta = load_model(res.model_path)
    assert meta["stain_normalize"] == "reinhard"
    # the operating threshold is chosen on the out-of-fold predictions (Youden), not fixed at 0.5
    from glomlib.evaluate.metrics import threshold_from_oof

    assert meta["threshold_rule"].startswith("youden")
    assert meta["threshold"] == pytest.approx(threshold_from_oof(p, "youden"))
    with pytest.raises(Exception, match="cv="):
        run_finetune(data=str(tiny_manifest), out=str(tmp_path / "x"), cv="hospital", init="scratch")


def test_simclr_augmentation_has_a_stain_switch():
    from glomlib.train.augment import AugmentParams, augment_batch
    from glomlib.train.simclr import SSLConfig

    assert AugmentParams.from_config(SSLConfig(stain_augment=0.05)).stain_augment == 0.05
    imgs = np.stack([_tissue(10, s) for s in range(4)])
    off = AugmentParams(image_size=24, crop_p=0, hflip_p=0, vflip_p=0, rotate_p=0, jitter_p=0)
    on = AugmentParams(**{**off.__dict__, "stain_augment": 0.08})
    x0 = augment_batch(imgs, off, torch.Generator().manual_seed(0), normalize=False)
    x1 = augment_batch(imgs, on, torch.Generator().manual_seed(0), normalize=False)
    assert torch.allclose(x0, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, atol=1e-5)
    assert float((x1 - x0).abs().mean()) > 0.005
    with pytest.raises(ValueError, match="stain_augment"):
        AugmentParams(stain_augment=2.0).validate()


# ------------------------------------------------------------------------------------------------ Macenko
def _he_like(dark: float, seed: int = 0, size: int = 24) -> np.ndarray:
    """A synthetic two-stain image: optical density = c1 * v1 + c2 * v2 (Beer-Lambert), scaled by ``dark``."""
    rng = np.random.default_rng(seed)
    v = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])  # haematoxylin-like, eosin-like (RGB OD)
    c = rng.gamma(2.0, 0.35, (size * size, 2)) * dark
    od = c @ v
    return np.clip(255 * np.exp(-od), 0, 255).reshape(size, size, 3).astype(np.uint8)


def test_macenko_maps_pale_and_dark_stains_towards_one_look_and_reports_what_it_cannot_fit():
    from glomlib.data.stain import StainReport, macenko

    pale, dark = _he_like(0.6, 0), _he_like(1.8, 1)
    rep = StainReport()
    out = normalize_stain(np.stack([pale, dark]), "macenko", report=rep)
    assert out.shape == (2, 24, 24, 3) and out.dtype == np.uint8
    gap_before = abs(float(pale.mean()) - float(dark.mean()))
    gap_after = abs(float(out[0].mean()) - float(out[1].mean()))
    assert gap_before > 40 and gap_after < gap_before / 3
    assert rep.method == "macenko" and rep.n_images == 2 and rep.unchanged == []
    assert np.array_equal(macenko(dark), out[1])  # one image alone gives the same result
    # background-only images cannot be fitted: left unchanged and named, never dropped
    blank = np.full((24, 24, 3), 250, np.uint8)
    rep2 = StainReport()
    out2 = macenko(np.stack([dark, blank, blank]), report=rep2)
    assert len(out2) == 3 and np.array_equal(out2[1], blank) and np.array_equal(out2[0], out[1])
    assert rep2.unchanged == [1, 2] and "stained pixels" in rep2.reasons[0]
    assert rep2.to_dict()["n_unchanged"] == 2


def test_qc_compares_the_image_the_model_sees_with_its_training_statistics():
    """A model trained on Macenko-normalised images stores their statistics; a dark patch of another lab that
    normalisation maps onto them is not flagged, as it would be if its raw colours were compared."""
    from glomlib.evaluate.qc import qc_column
    from glomlib.models.integrity import pixel_stats

    train = np.stack([_he_like(1.0, s) for s in range(8)])
    dark = _he_like(2.2, 99)
    for stain, want in (("macenko", "ok"), ("", "far from the training stain")):
        seen = normalize_stain(train, stain) if stain else train
        meta = {"image_size": 24, "stain_normalize": stain, "pixel_stats": pixel_stats(seen)}
        assert qc_column([(24, 24)], dark[None], meta)[0].startswith(want)


def test_the_cache_normalises_once_and_keeps_what_it_left_unchanged(tmp_path, write_png):
    """load_images(stain=...) equals normalising the plain cached images, is its own cache entry (built once,
    then only read), and its index lists the images the method left unchanged."""
    from glomlib.data.cache import load_images, stain_report

    paths = [str(write_png(tmp_path / f"im{i}.png", _he_like(0.5 + 0.3 * i, i))) for i in range(4)]
    paths.append(str(write_png(tmp_path / "blank.png", np.full((24, 24, 3), 250, np.uint8))))
    cd = tmp_path / "cache"
    plain = load_images(paths, 24, cache_dir=cd)
    mac = load_images(paths, 24, cache_dir=cd, stain="macenko")
    assert np.array_equal(np.asarray(mac), normalize_stain(np.asarray(plain), "macenko"))
    assert np.array_equal(
        np.asarray(load_images(paths, 24, cache_dir=cd, stain="reinhard")), reinhard(np.asarray(plain))
    )
    assert mac.filename != plain.filename and len(list(cd.glob("*.npy"))) == 3
    rep = stain_report(mac)
    assert rep.method == "macenko" and rep.n_images == 5 and rep.unchanged == [4] and "stained pixels" in rep.reasons[0]
    assert stain_report(plain).unchanged == []
    before = Path(mac.filename).stat().st_mtime_ns
    again = load_images(paths, 24, cache_dir=cd, stain="macenko")  # a second run reads the entry, builds nothing
    assert again.filename == mac.filename and Path(mac.filename).stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="stain_normalize"):
        load_images(paths, 24, cache_dir=cd, stain="vahadane")


def test_macenko_brings_the_dark_centre_closer_on_real_patches(real_manifest):
    """glomeruli-pas: SESCAM stains darkest; Macenko (and Reinhard) shrink its optical-density gap to the other
    centres, and no real patch is left unfitted."""
    import pandas as pd

    from glomlib.data.cache import load_images
    from glomlib.data.manifest import read_manifest
    from glomlib.data.stain import StainReport

    df = read_manifest(real_manifest, positive_label="GS")
    df = pd.concat([g.iloc[:40] for _, g in df.groupby("center")])
    imgs = np.asarray(load_images(df["path"].tolist(), 48))
    od = lambda a: -np.log10((a.reshape(len(a), -1).astype(float) + 1) / 256).mean(1)  # noqa: E731
    sescam = (df["center"] == "SESCAM").to_numpy()

    def gap(a):
        v = od(a)
        return float(v[sescam].mean() - v[~sescam].mean())

    rep = StainReport()
    mac = normalize_stain(imgs, "macenko", report=rep)
    assert rep.unchanged == [] and rep.n_images == len(imgs)
    assert gap(imgs) > 0.1  # darker before
    assert abs(gap(mac)) < gap(imgs) / 2
    assert abs(gap(reinhard(imgs))) < gap(imgs) / 2


def test_finetune_writes_the_stain_report(tiny_manifest, tmp_path):
    import json

    from glomlib.evaluate.predict import load_model
    from glomlib.train.finetune import run_finetune

    res = run_finetune(
        data=str(tiny_manifest),
        out=str(tmp_path / "m"),
        init="scratch",
        backbone="resnet18",
        image_size=16,
        epochs=1,
        folds=2,
        positive_label="M1",
        progress=False,
        stain_normalize="macenko",
        min_steps=0,
        device="cpu",
    )
    doc = json.loads((tmp_path / "m" / "stain.json").read_text())
    assert doc["method"] == "macenko" and doc["n_images"] == 24
    assert doc["n_unchanged"] == len(doc.get("unchanged_files", []))
    _, meta = load_model(res.model_path)
    assert meta["stain_normalize"] == "macenko"


# ------------------------------------------------------------------- leave-one-centre-out glom encoders
def test_ssl_can_leave_a_centre_out_and_normalise_stain(make_manifest, tmp_path):
    from glomlib.core.config import ConfigError
    from glomlib.models.files import read_encoder_meta
    from glomlib.train.simclr import SSLConfig, load_data, run_ssl

    man = make_manifest(centers=("A", "B", "C"))
    cfg = SSLConfig(
        data=str(man),
        exclude_centre="B",
        stain_normalize="reinhard",
        positive_label="M1",
        image_size=16,
        backbone="resnet18",
        ssl_init="scratch",
    )
    d = load_data(cfg)
    assert "B" not in set(d["df"]["center"]) and len(d["df"]) == 16
    from glomlib.data.cache import load_images

    plain = load_images(d["df"]["path"].tolist(), 16)
    assert np.array_equal(np.asarray(d["images"]), reinhard(np.asarray(plain)))
    res = run_ssl(
        SSLConfig(
            **{
                **cfg.__dict__,
                "out": str(tmp_path / "ssl"),
                "epochs": 1,
                "batch_size": 8,
                "final_probe": False,
                "knn_every": 0,
                "progress": False,
                "device": "cpu",
            }
        ),
        progress=False,
    )
    meta = read_encoder_meta(res.encoder_path)
    assert meta["exclude_centre"] == "B" and meta["stain_normalize"] == "reinhard"
    with pytest.raises(ConfigError, match=r"exclude_centre='X'.*\['A', 'B', 'C'\]"):
        load_data(SSLConfig(data=str(man), exclude_centre="X", positive_label="M1"))
    with pytest.raises(ConfigError, match="stain_normalize"):
        SSLConfig(stain_normalize="vahadane").validate()


def test_glom_leave_one_centre_out_uses_the_encoder_pretrained_without_the_test_centre(make_manifest, tmp_path):
    import json

    from glomlib.core.config import ConfigError
    from glomlib.train.finetune import FinetuneConfig, run_finetune
    from glomlib.train.simclr import SSLConfig, run_ssl

    man = make_manifest(centers=("A", "B", "C"))
    for c in ("A", "B", "C"):
        run_ssl(
            SSLConfig(
                data=str(man),
                exclude_centre=c,
                out=str(tmp_path / f"ssl-without-{c}"),
                epochs=1,
                batch_size=8,
                image_size=16,
                backbone="resnet18",
                ssl_init="scratch",
                final_probe=False,
                knn_every=0,
                progress=False,
                device="cpu",
                positive_label="M1",
            ),
            progress=False,
        )
    spec = str(tmp_path / "ssl-without-{centre}")
    kw = dict(
        data=str(man),
        init="glom",
        ssl_checkpoint=spec,
        backbone="resnet18",
        image_size=16,
        epochs=1,
        folds=3,
        cv="centre",
        final_model=False,
        positive_label="M1",
        progress=False,
        min_steps=0,
        device="cpu",
    )
    res = run_finetune(out=str(tmp_path / "ft"), **kw)
    for k in range(3):
        fold = json.loads((tmp_path / "ft" / "checkpoints" / f"seed0-fold{k}" / "result.json").read_text())
        (centre,) = set(res.predictions.loc[res.predictions["fold"] == k, "center"])
        assert fold["init_info"]["ssl_checkpoint"].endswith(f"ssl-without-{centre}/encoder.safetensors")
        assert fold["init_info"]["ssl_meta"]["exclude_centre"] == centre
    # the placeholder only makes sense for leave-one-centre-out glom runs without a final model
    for bad, msg in (({"cv": "slide"}, "placeholder"), ({"final_model": True}, "final_model=false")):
        with pytest.raises(ConfigError, match=msg):
            FinetuneConfig(**{**kw, **bad}).validate()
    # a missing per-centre encoder is named before any training
    import shutil

    shutil.rmtree(tmp_path / "ssl-without-B")
    with pytest.raises(FileNotFoundError, match=r"held-out centre\(s\).*ssl-without-B.*--exclude-centre"):
        run_finetune(out=str(tmp_path / "ft2"), **kw)
    assert not (tmp_path / "ft2" / "checkpoints").exists() or not any((tmp_path / "ft2" / "checkpoints").iterdir())


def test_centre_summary_is_the_mean_and_sd_over_seeds():
    import pandas as pd

    from glomlib.evaluate.external import centre_summary, centre_table

    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1, 2):
        for c, slides in (("A", ["a1", "a2"]), ("B", ["b1", "b2", "b3"])):
            for s in slides:
                for i in range(8):
                    y = int(i % 3 == 0)
                    rows.append(
                        {
                            "path": f"{s}-{i}.png",
                            "slide": s,
                            "center": c,
                            "y": y,
                            "seed": seed,
                            "prob": float(np.clip(0.6 * y + rng.normal(0.2, 0.2), 0, 1)),
                        }
                    )
    pred = pd.DataFrame(rows)
    t = centre_summary({"r": pred}).set_index("centre")
    per_seed = [centre_table({"r": pred[pred["seed"] == s]}).set_index("centre") for s in (0, 1, 2)]
    for c in ("A", "B"):
        aucs = [p.at[c, "auc"] for p in per_seed]
        assert t.at[c, "auc"] == pytest.approx(np.mean(aucs))
        assert t.at[c, "auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
        assert t.at[c, "biopsy_mae_hard"] == pytest.approx(np.mean([p.at[c, "biopsy_mae_hard"] for p in per_seed]))
        assert t.at[c, "seeds"] == 3
