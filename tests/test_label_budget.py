"""Issue 21's label-budget protocol: nested class-stratified subsets, the same for every init (paired), test folds
untouched, per-class budgets, the frozen-probe seeds and notebook 04's paired table."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from glomlib.core.config import budget_name, budget_value
from glomlib.data import splits
from glomlib.select import stats as S
from glomlib.select.simulate import budget_probe
from glomlib.train.finetune import FinetuneConfig
from glomlib.train.finetune.cv import _split, fold_dir_name

BUDGETS = ["1/class", "2/class", "4/class", "8/class", 0.05, 0.1, 0.25, 0.5, 1.0]


def _data(n_slides=10, per_slide=12, seed=0):
    rng = np.random.default_rng(seed)
    slide = np.repeat([f"S{i}" for i in range(n_slides)], per_slide)
    y = (rng.random(len(slide)) < 0.3).astype(int)
    y[::per_slide] = 1  # every slide holds both classes
    y[1::per_slide] = 0
    df = pd.DataFrame(
        {"slide": slide, "y": y, "label": np.where(y == 1, "M1", "M0"), "path": [f"p{i}" for i in range(len(y))]}
    )
    return df.assign(patient=df["slide"], center="A", split="")


def test_budget_spellings():
    assert [budget_value(b) for b in ("4/class", "4 / class", 0.1, "10%", "1")] == [-4, -4, 0.1, 0.1, 1.0]
    assert budget_name(-4) == "4/class" and budget_name(0.05) == "5%"
    assert fold_dir_name(-4, 0, 3) == "4perclass-seed0-fold3" and fold_dir_name(0.1, 0, 3) == "frac0.1-seed0-fold3"
    for bad in ("0/class", "1.5/class", 0, 1.5):
        with pytest.raises(ValueError):
            budget_value(bad)
    assert FinetuneConfig.from_params(label_fractions="1,2/class,0.1,1/class").fractions == [-1.0, -2.0, 0.1, 1.0]
    with pytest.raises(ValueError, match="label_fractions"):
        FinetuneConfig.from_params(label_fractions=["1/class", "1 /class"])  # the same budget twice


def test_nested_subsets_and_exact_counts_per_class():
    y = _data()["y"].to_numpy()
    masks = {b: splits.nested_subset(y, budget_value(b), seed=7) for b in BUDGETS}
    for family in (BUDGETS[:4], BUDGETS[4:]):
        for small, large in zip(family, family[1:]):
            assert not (masks[small] & ~masks[large]).any(), f"{small} is not inside {large}"
    for c in (0, 1):  # across the two kinds of budget, per class: one is a prefix of the other
        order = sorted(masks, key=lambda b: (masks[b] & (y == c)).sum())
        for small, large in zip(order, order[1:]):
            assert not (masks[small] & ~masks[large] & (y == c)).any()
    for n in (1, 2, 4, 8):
        m = masks[f"{n}/class"]
        assert (y[m] == 1).sum() == n and (y[m] == 0).sum() == n
    assert masks[1.0].all()
    # a class with fewer images than asked gives all it has (and says so in the counts)
    few = np.array([1, 1, 1] + [0] * 30)
    m = splits.nested_subset(few, -8, seed=0)
    assert (few[m] == 1).sum() == 3 and (few[m] == 0).sum() == 8
    # seeded by seed only: another seed, another order; the same seed, the same subset
    assert (splits.nested_subset(y, -4, 7) == masks["4/class"]).all()
    assert not (splits.nested_subset(y, -4, 8) == masks["4/class"]).all()


def _fake_run(df, init):
    cfg = FinetuneConfig.from_params(init=init, folds=3, label_fractions=BUDGETS)
    return types.SimpleNamespace(cfg=cfg, df=df, y=df["y"].to_numpy())


def test_split_pairs_inits_keeps_test_folds_and_nests():
    df = _data()
    folds = np.asarray(splits.assign_folds(df, n_folds=3, seed=0))
    glom, scratch = _fake_run(df, "glom"), _fake_run(df, "scratch")
    for k in range(3):
        parts = {b: _split(glom, folds, budget_value(b), 0, k) for b in BUDGETS}
        for b, sp in parts.items():
            other = _split(scratch, folds, budget_value(b), 0, k)
            assert all((sp[key] == other[key]).all() for key in ("test", "pool", "train", "val")), "not paired"
            assert (sp["test"] == np.flatnonzero(folds == k)).all(), "the test fold changed with the budget"
            assert not set(df["slide"].iloc[sp["test"]]) & set(df["slide"].iloc[sp["pool"]])
            assert len(set(df["y"].iloc[sp["train"]])) == 2, f"{b}: the model would see one class"
        for family in (BUDGETS[:4], BUDGETS[4:]):  # per-class counts, shares: each a chain of subsets
            pools = [set(parts[b]["pool"]) for b in family]
            assert all(a <= b for a, b in zip(pools, pools[1:])), f"budgets {family} are not nested"
        for c in (0, 1):  # per class, any two budgets: one is a prefix of the other
            pools = sorted((set(sp["pool"][df["y"].to_numpy()[sp["pool"]] == c]) for sp in parts.values()), key=len)
            assert all(a <= b for a, b in zip(pools, pools[1:])), "budgets are not nested within a class"
        one = parts["1/class"]
        assert len(one["pool"]) == 2 and len(one["val"]) == 0  # too few for a validation split: none


def test_probe_is_paired_seeded_and_reports_one_class():
    df = _data(n_slides=9)
    folds = np.asarray(splits.assign_folds(df, n_folds=3, seed=0))
    X = np.random.default_rng(1).normal(size=(len(df), 6)) + df["y"].to_numpy()[:, None]
    budgets = [-1.0, -4.0, 1.0]
    sim = budget_probe({"glom": X, "copy": X.copy()}, df["y"], df["slide"], folds, budgets, seeds=4, dims=0)
    assert sim.prob.shape == (2, 3, 4, len(df)) and sim.valid.all()
    assert np.allclose(sim.prob[0], sim.prob[1], equal_nan=True), "same features, same subsets: same predictions"
    assert not np.allclose(sim.prob[0, 0, 0], sim.prob[0, 0, 1]), "seeds draw different subsets"
    assert np.allclose(sim.prob[0, 2, 0], sim.prob[0, 2, 1]), "100 % is the same for every seed"
    # each 1/class subset of 3 folds: 3 positives in all
    assert (sim.n_pos_picked[:, 0] == 3).all()
    # a training pool without positives: that seed has no AUC at any budget, counted, not averaged
    y1 = df["y"].to_numpy().copy()
    y1[folds != 0] = 0
    sim1 = budget_probe({"glom": X}, y1, df["slide"], folds, budgets, seeds=2, dims=0)
    assert not sim1.valid.any()
    tab = S.budget_table(sim1, S.bootstrap(sim1, n_boot=5, ref="glom"))
    assert (tab["one_class_share"] == 1).all() and tab["auc"].isna().all()


def test_paired_table_from_predictions():
    """What notebook 04 shows per budget: AUC per init and init - glom with a paired slide/seed bootstrap."""
    df = _data(n_slides=8)
    folds = np.asarray(splits.assign_folds(df, n_folds=2, seed=0))
    rng = np.random.default_rng(0)
    preds = {}
    for init, signal in (("glom", 2.0), ("imagenet", 1.0)):
        rows = []
        for b in (-2.0, 1.0):
            for seed in (0, 1):
                p = 1 / (1 + np.exp(-(signal * (df["y"] - 0.5) + rng.normal(size=len(df)))))
                rows.append(df.assign(prob=p, fold=folds, seed=seed, init=init, label_fraction=b))
        preds[init] = pd.concat(rows)
    sim = S.from_predictions(preds)
    assert sim.strategies == ["glom", "imagenet"] and sim.budgets == [-2.0, 1.0] and sim.seeds == [0, 1]
    tab = S.budget_table(sim, S.bootstrap(sim, n_boot=50, ref="glom"))
    g = tab[tab["strategy"] == "glom"]
    assert (g["delta_vs_random"] == 0).all()
    im = tab[tab["strategy"] == "imagenet"]
    assert (im["delta_vs_random"] < 0).all() and (im["delta_low"] <= im["delta_vs_random"]).all()
    assert (tab["one_class_share"] == 0).all()
