"""glomlib select: strategies, per-slide cap, ranking, test-slide isolation, one-class selections, ProbCover memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glomlib.select import simulate as simmod
from glomlib.select import stats
from glomlib.select.report import sentence
from glomlib.select.strategies import STRATEGIES, PoolTooLargeError, pick


def _pool(n=120, d=8, n_slides=10, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    X = rng.normal(size=(n, d)) + y[:, None]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y, np.array([f"s{i % n_slides}" for i in range(n)])


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategies_return_the_budget_unlabelled_and_capped(name):
    X, y_true, slides = _pool()
    y = np.full(len(X), -1)
    y[:10] = y_true[:10]  # ten already labelled (both classes): margin trains on them
    p = pick(name, X, y, slides, 15, cap=2, seed=3)
    assert len(p.index) == 15 == len(set(p.index)) == len(p.reason) == len(p.score)
    assert min(p.index) >= 10, "an already labelled row was picked"
    assert pd.Series(slides[p.index]).value_counts().max() <= 2
    assert all(isinstance(r, str) and r for r in p.reason)


def test_cap_counts_earlier_picks_and_refuses_when_too_tight():
    X, _, slides = _pool(n_slides=4)
    y = np.full(len(X), -1)
    p = pick("typiclust", X, y, slides, 4, cap=2, seed=0, counts={"s0": 2, "s1": 2})
    assert set(slides[p.index]) <= {"s2", "s3"}
    with pytest.raises(ValueError, match="raise --max-per-slide"):
        pick("random", X, y, slides, 9, cap=2)


@pytest.mark.parametrize("name", ["random", "stratified", "kcenter", "probcover"])
def test_ranking_is_greedy_so_top_k_is_the_smaller_budget(name):
    X, _, slides = _pool()
    y = np.full(len(X), -1)
    big = pick(name, X, y, slides, 12, seed=1)
    small = pick(name, X, y, slides, 5, seed=1)
    assert big.index[:5] == small.index
    if name == "stratified":
        assert len(set(slides[small.index])) == 5


def test_simulation_rounds_are_nested():
    X, y, slides = _pool()
    prev: set[int] = set()
    for b, sel in simmod.run_rounds("typiclust", X, y, slides, [2, 4, 8, 16], seed=0):
        assert len(sel) == b and prev <= set(sel)
        prev = set(sel)


def test_probcover_refuses_a_pool_too_large_for_memory():
    X, _, slides = _pool()
    with pytest.raises(PoolTooLargeError, match="typiclust"):
        pick("probcover", X, np.full(len(X), -1), slides, 4, memory_limit_gb=1e-6)
    from glomlib.cli import EXIT_USAGE, classify

    assert classify(PoolTooLargeError("x")) == EXIT_USAGE
    folds = np.array([int(s[1:]) % 2 for s in slides])
    with pytest.raises(PoolTooLargeError):
        simmod.simulate(X, _pool()[1], slides, folds, ["random", "probcover"], [2], seeds=1, memory_limit_gb=1e-6)


def test_simulation_never_shows_test_slides_to_a_strategy(monkeypatch):
    X, y, slides = _pool()
    folds = np.array([int(s[1:]) % 3 for s in slides])
    seen = []

    def spy(strategy, Xp, ystate, slides_p, n, **kw):
        seen.append(set(slides_p))
        return pick(strategy, Xp, ystate, slides_p, n, **kw)

    monkeypatch.setattr(simmod, "pick", spy)
    simmod.simulate(X, y, slides, folds, ["random", "kcenter"], [4, 8], seeds=1, dims=0)
    per_fold = len(seen) // 3
    for f in range(3):
        test_slides = set(slides[folds == f])
        for s in seen[f * per_fold : (f + 1) * per_fold]:
            assert s and not (s & test_slides)


def test_one_class_selections_are_counted_not_averaged():
    X, y, slides = _pool(n=90, seed=2)
    y = (np.arange(90) % 9 == 0).astype(int)  # rare positives: many 2-label picks hold one class
    folds = np.array([int(s[1:]) % 3 for s in slides])
    sim = simmod.simulate(X, y, slides, folds, ["random"], [2], seeds=12, dims=0)
    v = sim.valid[0, 0]
    assert 0 < v.mean() < 1
    assert np.isnan(sim.prob[0, 0][~v.any(axis=1)]).all()
    boot = stats.bootstrap(sim, n_boot=10)
    bt = stats.budget_table(sim, boot)
    from glomlib.evaluate.metrics import auc

    by_hand = [auc(y[folds == f], sim.prob[0, 0, k, folds == f]) for k, f in zip(*np.nonzero(v))]
    assert bt.loc[0, "auc"] == pytest.approx(np.mean(by_hand))
    assert bt.loc[0, "one_class_share"] == pytest.approx(1 - v.mean())
    assert bt.loc[0, "n_with_classifier"] == v.sum()


def test_weighted_auc_matches_metrics_auc_and_a_duplicated_resample():
    from glomlib.evaluate.metrics import auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # ties
    w = rng.integers(0, 3, 40)
    got = stats.weighted_auc(s, y, np.vstack([np.ones(40), w]))
    assert got[0] == pytest.approx(auc(y, s))
    idx = np.repeat(np.arange(40), w)
    assert got[1] == pytest.approx(auc(y[idx], s[idx]))


def _tables(delta_low):
    bt = pd.DataFrame(
        {
            "strategy": ["random", "typiclust"],
            "labels": [2, 2],
            "delta_low": [0, delta_low],
            "delta_high": [0, 0.1],
            "one_class_share": [0.5, 0.0],
        }
    )
    st = pd.DataFrame(
        {
            "strategy": ["random", "typiclust"],
            "aubc": [0.8, 0.85],
            "aubc_delta": [0, 0.05],
            "aubc_delta_low": [0, delta_low],
            "aubc_delta_high": [0, 0.1],
            "labels_to_match_random_at_max": [2, 2],
            "one_class_share_at_min": [0.5, 0],
        }
    )
    return bt, st


def test_sentence_claims_only_what_the_ci_excludes():
    text = sentence(*_tables(-0.01))
    assert "slide-stratified random is the default" in text and "not distinguishable" in text
    text = sentence(*_tables(0.01))
    assert "TypiClust beat random" in text and "Default: TypiClust" in text


def test_cli_select_on_a_tiny_manifest(make_manifest, tmp_path):
    from glomlib.cli import main

    m = make_manifest(n_slides=6, per_slide=6, size=32, extra_columns={"split": lambda s, k: "test" if s == 5 else ""})
    out = tmp_path / "sel"
    args = [
        "select",
        "--data",
        str(m),
        "--encoder",
        "scratch",
        "--image-size",
        "32",
        "--budget",
        "6",
        "--max-per-slide",
        "2",
        "--labels",
        "ignore",
        "--clusters",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    t = pd.read_csv(out / "next_to_label.csv", keep_default_na=False)
    assert list(t["rank"]) == list(range(1, 7)) and "S05" not in set(t["slide"])
    assert t["slide"].value_counts().max() <= 2
    assert {"path", "slide", "cluster", "score", "reason", "image_id", "reviewed_label"} <= set(t.columns)
    assert "Cluster" in (out / "gallery.html").read_text()
    assert main(args) == 3  # never overwritten
    from glomlib.data.relabel import apply_review  # the sheet is filled and applied like notebook 07's

    t.loc[0, "reviewed_label"] = "M1"
    t.to_csv(tmp_path / "filled.csv", index=False)
    apply_review(tmp_path / "filled.csv", m, tmp_path / "relabelled.csv", reviewer="pathologist A")
    assert (tmp_path / "relabelled.csv").is_file()


def test_cli_simulate_on_a_tiny_manifest(make_manifest, tmp_path):
    from glomlib.cli import main

    m = make_manifest(n_slides=6, per_slide=6, size=32)
    sim_args = [
        "select",
        "--simulate",
        "--data",
        str(m),
        "--encoder",
        "scratch",
        "--image-size",
        "32",
        "--strategies",
        "random,stratified",
        "--budgets",
        "2,4",
        "--seeds",
        "2",
        "--folds",
        "2",
        "--n-boot",
        "20",
        "--out",
        str(tmp_path / "sim"),
    ]
    assert main(sim_args) == 0
    b = pd.read_csv(tmp_path / "sim" / "budgets.csv")
    assert set(b["strategy"]) == {"random", "stratified"} and (tmp_path / "sim" / "simulation.png").is_file()


def test_embedding_feeds_images_as_the_glom_encoder_was_pretrained(real_manifest, tmp_path):
    """A glom encoder pretrained on Macenko-normalised patches embeds Macenko-normalised patches (select, 04's probe);
    ImageNet/scratch weights and an encoder pretrained without normalisation get the patches as they are."""
    from glomlib.data.cache import load_images
    from glomlib.data.stain import normalize_stain
    from glomlib.models.backbones import build_backbone
    from glomlib.models.files import save_encoder
    from glomlib.models.inference import extract_features
    from glomlib.select import embed as E

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    bb, _ = build_backbone("resnet18", init="scratch")
    bb.eval()
    raw, mac = tmp_path / "raw.safetensors", tmp_path / "mac.safetensors"
    save_encoder(raw, bb, {"backbone": "resnet18", "image_size": 32})
    save_encoder(mac, bb, {"backbone": "resnet18", "image_size": 32, "stain_normalize": "macenko"})
    er, em = E.resolve_encoder(str(raw), "resnet18", 32), E.resolve_encoder(str(mac), "resnet18", 32)
    assert (er["stain"], em["stain"], E.resolve_encoder("imagenet", "resnet18", 32)["stain"]) == ("", "macenko", "")
    df = pd.read_csv(real_manifest, keep_default_na=False).groupby("label").head(3).reset_index(drop=True)
    df["path"] = [str(real_manifest.parent / p) for p in df["path"]]
    df["sha256"] = [f"h{i}" for i in range(len(df))]
    xr, xm = E._compute(df, er, 8, "cpu"), E._compute(df, em, 8, "cpu")
    imgs = np.array(load_images(df["path"].tolist(), 32))
    want = extract_features(bb, normalize_stain(imgs, "macenko"), batch_size=8, image_size=32)
    assert np.allclose(xm, want, atol=1e-5) and not np.allclose(xr, xm, atol=1e-3)
    assert E.cache_key(er, list(df["sha256"])) != E.cache_key(em, list(df["sha256"]))
