"""Tests for glomlib.review.explain: predictions -> outcomes, Grad-CAM and its share inside the mask, embeddings,
neighbours, the error browser's static/interactive switch, on constructed cases and real patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import glomlib.review.audit  # noqa: F401  (the re-export test walks every review package)
import glomlib.review.labels  # noqa: F401
from glomlib.review import explain

META = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "image_size": 32, "backbone": "tiny"}


def _pred_csv(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "predictions.csv", index=False)
    return path


def _rows(n=8, seeds=(0,), fraction=1.0, flip=()):
    rows = []
    for s in seeds:
        for i in range(n):
            y = i % 2
            prob = 0.9 if y else 0.1
            if i in flip:
                prob = 1 - prob
            rows.append(
                dict(
                    path=f"/x/{i}.png",
                    slide=f"s{i // 4}",
                    center="A" if i < 4 else "B",
                    label="M1" if y else "M0",
                    y=y,
                    prob=prob,
                    pred=int(prob >= 0.5),
                    fold=i % 2,
                    seed=s,
                    init="glom",
                    label_fraction=fraction,
                )
            )
    return rows


def test_load_predictions_outcomes_and_seed_mean(tmp_path):
    rows = _rows(seeds=(0, 1), flip=(0, 1)) + _rows(fraction=0.1, flip=(2, 3, 4))
    rows[8]["prob"] = 0.7  # seed 1 of image 0 (a false positive): mean over seeds = (0.9 + 0.7) / 2
    run = _pred_csv(tmp_path / "run", rows)
    p = explain.load_predictions(run, label_fraction=1.0)
    assert len(p) == 8 and (p["n_seeds"] == 2).all()
    assert p.loc[p.path == "/x/0.png", "prob"].item() == pytest.approx(0.8)
    assert p.set_index("path").loc[["/x/0.png", "/x/1.png"], "outcome"].tolist() == ["FP", "FN"]
    assert p["error"].sum() == 2
    assert ((p["confidence"] >= 0.5) & (p["confidence"] <= 1)).all()
    small = explain.load_predictions(run, label_fraction=0.12)  # nearest available fraction (0.1)
    assert small["error"].sum() == 3
    rates = explain.error_rates(p, "center")
    assert rates.loc["A", "errors"] == 2 and rates.loc["B", "error_rate"] == 0
    assert explain.ranked_errors(p, "FP")["path"].tolist() == ["/x/0.png"]


def test_resolve_run_latest_and_errors(tmp_path):
    import os
    import time

    with pytest.raises(FileNotFoundError, match="notebook 03"):
        explain.resolve_run("latest", tmp_path / "runs")
    old = _pred_csv(tmp_path / "runs" / "a" / "finetune" / "glom", _rows())
    (old / "model.safetensors").write_bytes(b"x")
    new = _pred_csv(tmp_path / "runs" / "b", _rows())
    (new / "model.safetensors").write_bytes(b"x")
    later = time.time() + 5
    os.utime(new / "predictions.csv", (later, later))
    _pred_csv(tmp_path / "runs" / "c", _rows())  # no model: not a fine-tune run
    assert explain.resolve_run("latest", tmp_path / "runs") == new
    assert explain.resolve_run(str(old), tmp_path / "runs") == old
    with pytest.raises(FileNotFoundError, match="predictions.csv"):
        explain.resolve_run(str(tmp_path / "nothing"))


def _channel_model(channel: int):
    """Tiny CNN whose logit is the mean of one colour channel: it 'looks' wherever that colour is."""
    import torch
    from torch import nn

    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    head = nn.Linear(3, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, channel] = 1.0
        head.bias.fill_(-0.1)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = conv, head

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3))).squeeze(1)

    return M().eval()


def _constructed_case(n=2):
    img = np.zeros((n, 32, 32, 3), np.uint8)
    img[:, 8:24, 8:24, 0] = 255  # red glomerulus in the centre (inside the mask)
    img[:, :6, :, 1] = 255  # green band along the top edge (outside the mask)
    mask = np.zeros((32, 32), bool)
    mask[6:26, 6:26] = True
    return img, mask


def test_gradcam_share_inside_mask_higher_for_model_looking_at_mask():
    img, mask = _constructed_case()
    looks_inside, looks_outside = _channel_model(0), _channel_model(1)
    cam_in = explain.gradcam(looks_inside, META, img, [1, 1], layer=looks_inside.conv)
    cam_out = explain.gradcam(looks_outside, META, img, [1, 1], layer=looks_outside.conv)
    assert cam_in.shape == (2, 32, 32) and cam_in.min() >= 0 and cam_in.max() <= 1 + 1e-6
    s_in, s_out = explain.mask_share(cam_in[0], mask), explain.mask_share(cam_out[0], mask)
    assert 0 <= s_out <= 1 and 0 <= s_in <= 1
    assert s_in > 0.9 and s_out < 0.1
    assert np.isnan(explain.mask_share(cam_in[0], None))
    assert np.isnan(explain.mask_share(np.zeros((32, 32)), mask))


def test_mask_share_bounds_random():
    rng = np.random.default_rng(0)
    for _ in range(20):
        cam = rng.random((16, 16)) * rng.integers(0, 2, (16, 16))
        m = rng.random((16, 16)) > 0.5
        s = explain.mask_share(cam, m)
        assert np.isnan(s) or 0 <= s <= 1
    assert explain.mask_share(np.ones((8, 8)), np.ones((16, 16))) == pytest.approx(1.0)  # resized mask


def test_target_layer_per_backbone():
    from glomlib.models.heads import build_classifier

    r = build_classifier("resnet18")
    assert explain.target_layer(r, "resnet18") is r.backbone.layer4
    e = build_classifier("efficientnet_lite0")
    assert explain.target_layer(e, "efficientnet_lite0") is e.backbone.blocks[-1]
    tiny = _channel_model(0)
    assert explain.target_layer(tiny, "other") is tiny.conv
    assert explain.head_layer(r) is r.head


def _map_side(model, layer, size: int) -> int:
    """The side of ``layer``'s output for a ``size`` px input, measured independently of cam_layer."""
    import torch

    seen = []
    h = layer.register_forward_hook(lambda m, i, o: seen.append(min(o.shape[-2:])) and None)
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, size, size))
    h.remove()
    return int(seen[0])


def test_cam_layer_gives_a_map_of_at_least_7x7_or_refuses():
    """At 64 px (quick-cpu) the last stage of EfficientNet-Lite0 / ResNet-18 gives 2x2 maps (stride 32), which say
    nothing about where the evidence is: the chosen layer is the deepest one with a map of at least 7x7; at 224 px
    that is the usual last stage; with no such layer (a 12 px input) the choice is refused (layer None)."""
    from glomlib.models.heads import build_classifier

    for backbone, stages in (("efficientnet_lite0", "backbone.blocks"), ("resnet18", "backbone.layer")):
        model = build_classifier(backbone)
        named = dict(model.named_modules())
        c = explain.cam_layer(model, 64)
        assert c["last_side"] == 2 == _map_side(model, explain.target_layer(model), 64)
        assert c["layer"] is named[c["name"]] and c["name"].startswith(stages)
        assert c["side"] == _map_side(model, c["layer"], 64) >= 7
        deeper = [m for k, m in named.items() if k.startswith(stages) and k.count(".") == c["name"].count(".")]
        nxt = deeper[deeper.index(c["layer"]) + 1]
        assert _map_side(model, nxt, 64) < 7  # the deepest usable one
        full = explain.cam_layer(model, 224)
        assert full["layer"] is explain.target_layer(model) and full["side"] == 7
        tiny = explain.cam_layer(model, 12)
        assert tiny["layer"] is None and tiny["name"] is None and tiny["side"] < 7
        cams = explain.gradcam(model, META | {"image_size": 64}, np.zeros((1, 64, 64, 3), np.uint8), [1], c["layer"])
        assert cams.shape == (1, 64, 64)


def test_cam_tile_is_native_size_with_heat_and_mask_outline(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((224, 224, 3), 200, np.uint8)).save(tmp_path / "p.png")
    mask = np.zeros((224, 224), np.uint8)
    mask[56:168, 56:168] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    plain = explain.cam_tile(str(tmp_path / "p.png"))
    assert plain.shape == (224, 224, 3) and (plain == 200).all()  # native size, untouched without map or mask
    cam = np.zeros((8, 8), np.float32)
    cam[0, 0] = 1.0  # evidence in the top-left corner only
    t = explain.cam_tile(str(tmp_path / "p.png"), cam, str(tmp_path / "m.png"))
    assert not np.array_equal(t[5, 5], plain[5, 5]) and (t[200, 200] == 200).all()  # heat where the map is
    assert (t[56:168, 56] == 255).all() and (t[112, 112] == 200).all()  # white outline, inside untouched


def test_embeddings_neighbours_and_tsne():
    model = _channel_model(0)
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    emb = explain.embeddings(model, META, imgs, batch_size=7)
    assert emb.shape == (20, 3)
    nn_idx = explain.nearest_neighbours(emb, [0, 5], k=3)
    assert nn_idx.shape == (2, 3) and 0 not in nn_idx[0] and 5 not in nn_idx[1]
    dup = np.vstack([emb, emb[:1] * 2])  # a scaled copy of image 0 is its nearest (cosine) neighbour
    assert explain.nearest_neighbours(dup, [0], k=1)[0, 0] == 20
    xy, method = explain.embed_2d(emb, "tsne", 0)
    assert xy.shape == (20, 2) and method == "t-SNE"


def test_interactive_switch_and_browser(monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.delenv("GLOMLIB_INTERACTIVE", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert explain.live_frontend(False) is False
    assert explain.live_frontend(True) is False  # plain Python / papermill: no widget
    monkeypatch.setenv("GLOMLIB_INTERACTIVE", "1")
    assert explain.live_frontend(True) is True
    assert explain.live_frontend(False) is False
    monkeypatch.setenv("GLOMLIB_INTERACTIVE", "0")
    assert explain.show_error_browser(_fake_pred(tmp_path), True) == "static"  # the page's gallery stands in
    monkeypatch.setenv("GLOMLIB_INTERACTIVE", "1")
    assert explain.show_error_browser(_fake_pred(tmp_path), True) == "widget"


def _fake_pred(tmp_path: Path) -> pd.DataFrame:
    from PIL import Image

    rows = _rows(flip=(0, 1, 2))
    for r in rows:
        p = tmp_path / "img" / Path(r["path"]).name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 24, 3), 40 * (int(p.stem) + 1) % 255, np.uint8)).save(p)
        r["path"] = str(p)
    run = _pred_csv(tmp_path / "run", rows)
    return explain.attach_masks(explain.load_predictions(run), None)


def test_filter_and_widget_builds(tmp_path):
    import ipywidgets

    pred = _fake_pred(tmp_path)
    assert len(explain.filter_errors(pred)) == 3
    assert set(explain.filter_errors(pred, "FP")["outcome"]) == {"FP"}
    assert len(explain.filter_errors(pred, "all", "B")) == 4
    assert len(explain.filter_errors(pred, "errors", confidence=(0.95, 1.0))) == 0
    box = explain.error_browser(pred, page_size=2, size=24)
    assert isinstance(box, ipywidgets.VBox)
    controls, nav, _ = box.children
    nav.children[1].click()  # next page
    assert nav.children[2].value.startswith("3 images · page 2/2")
    controls.children[0].value = "FN"  # filter resets to page 1
    assert nav.children[2].value.startswith("1 images · page 1/1")


@pytest.mark.realdata
def test_real_patches_gradcam_with_masks(shared_data, tmp_path):
    """A (scratch, tiny-resolution) ResNet-18 run folder in the contract format on real patches with real masks."""
    import matplotlib
    import torch

    from glomlib.evaluate.predict import save_model
    from glomlib.models.heads import build_classifier

    matplotlib.use("Agg")
    torch.manual_seed(0)
    raw = shared_data / "Patches" / "Raw"
    paths = sorted((raw / "Images" / "GS").glob("*.png"))[:8] + sorted((raw / "Images" / "nonGS").glob("*.png"))[:8]
    rows = []
    for i, p in enumerate(paths):
        y = int(p.parent.name == "GS")
        prob = [0.2, 0.8][y] if i % 4 else [0.9, 0.1][y]  # every 4th image an error
        rows.append(
            dict(
                path=str(p),
                slide=p.stem.rsplit("-", 1)[0],
                center=p.stem.split("_")[0],
                label=p.parent.name,
                y=y,
                prob=prob,
                pred=int(prob >= 0.5),
                fold=0,
                seed=0,
                init="scratch",
                label_fraction=1.0,
            )
        )
    run = _pred_csv(tmp_path / "run", rows)
    model = build_classifier("resnet18").eval()
    save_model(
        model,
        dict(
            backbone="resnet18",
            image_size=64,
            mean=[0.485, 0.456, 0.406],
            std=[0.229, 0.224, 0.225],
            positive_label="GS",
            negative_label="nonGS",
            init="scratch",
        ),
        run / "model.safetensors",
    )
    manifest = pd.DataFrame({"path": [str(p) for p in paths], "mask": [str(raw / "Masks" / p.name) for p in paths]})
    pred = explain.attach_masks(explain.load_predictions(run), manifest)
    assert pred["error"].sum() == 4
    models = explain.explain_models(run, pred)  # no fold models in this folder: the final model, with a note
    assert models.source == "final" and "before fold models were kept" in models.note
    model, meta = explain.load_run_model(run)
    layer = explain.cam_layer(model, 64)
    assert layer["name"] == "backbone.layer2" and layer["side"] == 8  # not layer4's 2x2 at 64 px
    cam_rows, imgs, cams, masks = explain.gradcam_errors(models, pred, n_per_kind=2, layer=layer["name"])
    assert len(cam_rows) == 4 and cams.shape == (4, 64, 64)
    shares = cam_rows["mask_share"].to_numpy()
    assert np.all((shares >= 0) & (shares <= 1))
    assert np.allclose(cams[0], explain.gradcam(model, meta, imgs[:1], [1], layer=layer["layer"])[0], atol=1e-5)
    native = explain.cam_tile(cam_rows["path"].iloc[0], cams[0], cam_rows["mask"].iloc[0])
    assert native.shape == (224, 224, 3)  # the real patch at its native size, not the 64 px input
    by_model = explain.embeddings_by_model(models, explain.load_display_images(pred["path"].tolist(), 64))
    emb = by_model[run / "model.safetensors"]
    assert emb.shape == (16, 512)
    nn_idx = explain.neighbours_by_model(models, by_model, explain.error_indices(pred, 4), 3)
    out = tmp_path / "out"
    from glomlib.evaluate import plots

    figs = {
        "c": explain.confidence_figure(pred),
        "r": explain.error_rate_figure(pred),
        "n": explain.neighbour_gallery(pred, nn_idx[:2], explain.error_indices(pred, 2)),
        "e": explain.embedding_figure(np.random.default_rng(0).random((16, 2)), pred),
    }
    for name, fig in figs.items():
        assert plots.save_figure(fig, out, name).stat().st_size > 5000
        matplotlib.pyplot.close(fig)
    paths_out = explain.write_outputs(
        out, pred, cam_rows, explain.neighbour_table(pred, nn_idx, explain.error_indices(pred, 4))
    )
    errs = pd.read_csv(paths_out["errors"])
    assert len(errs) == 4 and errs["mask_share"].between(0, 1).all()


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory):
    """A tiny 2-fold fine-tune run (fold models kept, no final model) on generated images."""
    from conftest import build_tiny_dataset

    from glomlib.train.finetune import run_finetune

    root = tmp_path_factory.mktemp("foldrun")
    manifest = build_tiny_dataset(root / "data", n_slides=8, per_slide=4, size=32)
    res = run_finetune(
        data=str(manifest),
        out=str(root / "run"),
        init="scratch",
        backbone="resnet18",
        image_size=32,
        epochs=1,
        batch_size=8,
        folds=2,
        seeds=[0, 1],
        positive_label="M1",
        progress=False,
        final_model=False,
    )
    return res.out


def test_each_error_explained_by_the_fold_model_that_did_not_see_it(fold_run):
    """Grad-CAM, embeddings and neighbours of an image come from the fold model whose test fold held its slide."""
    import matplotlib

    from glomlib.evaluate.runs import fold_models
    from glomlib.models.files import load_model, read_model_meta

    matplotlib.use("Agg")
    pred = explain.load_predictions(fold_run, threshold=0.5)
    pred = pred.assign(prob=np.where(np.arange(len(pred)) % 3 == 0, 1 - pred["prob"], pred["prob"]))  # ensure errors
    pred["pred"] = (pred["prob"] >= 0.5).astype(int)
    pred["outcome"] = np.select(
        [(pred.y == 1) & (pred.pred == 1), (pred.y == 0) & (pred.pred == 0), (pred.y == 0) & (pred.pred == 1)],
        ["TP", "TN", "FP"],
        "FN",
    )
    pred["confidence"] = np.where(pred["pred"] == 1, pred["prob"], 1 - pred["prob"])
    pred["error"] = pred["outcome"].isin(["FP", "FN"])
    pred["mask"] = ""
    assert pred["error"].sum() >= 4
    models = explain.explain_models(fold_run, pred)
    assert models.source == "fold" and "seed 0" in models.note
    table = fold_models(fold_run)
    assert len(table) == 4 and len(set(models.files)) == 2  # 2 seeds x 2 folds kept; seed 0's two explain
    for slide, f in zip(pred["slide"], models.files):
        meta = read_model_meta(f)
        assert meta["seed"] == 0 and slide in meta["test_slides"]
        train = json.loads((Path(f).parent / "result.json").read_text())["train_slides"]
        assert slide not in train  # the explaining model never trained on the image
    rows, imgs, cams, _ = explain.gradcam_errors(models, pred, n_per_kind=3)
    assert len(rows) >= 4
    for (_, r), img, cam in zip(rows.iterrows(), imgs, cams):
        assert r["slide"] in read_model_meta(r["model"])["test_slides"]
        model, meta = load_model(r["model"])
        assert np.allclose(explain.gradcam(model, meta, img[None], [1])[0], cam, atol=1e-5)  # this model's map
    all_imgs = explain.load_display_images(pred["path"].tolist(), 32)
    by_model = explain.embeddings_by_model(models, all_imgs)
    assert set(by_model) == set(models.files)
    emb = explain.oof_embeddings(models, by_model)
    i = 0
    own = by_model[models.files[i]]
    assert np.allclose(emb[i], ((own - own.mean(0)) / np.maximum(own.std(0), 1e-6))[i], atol=1e-5)
    errs = explain.error_indices(pred, 4)
    nn_idx = explain.neighbours_by_model(models, by_model, errs, 3)
    for e, row in zip(errs, nn_idx):
        assert list(row) == list(explain.nearest_neighbours(by_model[models.files[e]], [e], 3)[0])
    table2 = explain.neighbour_table(pred, nn_idx, errs)
    assert len(table2) == 3 * len(errs)


def test_old_run_without_fold_models_falls_back_with_a_message(fold_run, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(fold_run, old)
    for f in old.glob("checkpoints/*/model.safetensors"):
        f.unlink()
    pred = explain.load_predictions(old)
    with pytest.raises(FileNotFoundError, match="notebook 03"):  # neither fold models nor a final model
        explain.explain_models(old, pred)
    shutil.copy(next(fold_run.glob("checkpoints/seed0-fold0/model.safetensors")), old / "model.safetensors")
    models = explain.explain_models(old, pred)
    assert models.source == "final" and set(models.files) == {old / "model.safetensors"}
    assert "trained on these very images" in capsys.readouterr().out


def test_review_packages_re_export_every_public_function():
    """A submodule named like a function (explain.gradcam once) would hide it: every name resolves to its object."""
    import importlib
    import inspect
    import pkgutil

    import glomlib.review

    for pkg in (glomlib.review.audit, glomlib.review.explain, glomlib.review.labels):
        for info in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for name, obj in vars(mod).items():
                if (
                    not name.startswith("_")
                    and (inspect.isfunction(obj) or inspect.isclass(obj))
                    and obj.__module__ == mod.__name__
                ):
                    assert getattr(pkg, name) is obj, f"{pkg.__name__}.{name}"
