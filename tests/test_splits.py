"""Slide-grouped stratified folds, explicit split column, inner validation; real data included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glomlib.data.manifest import read_manifest
from glomlib.data.splits import SplitError, assign_folds, fold_table, groups_of, inner_validation


def _df(n_slides=10, per=6, pos_every=2, patient=None):
    rows = []
    for s in range(n_slides):
        for k in range(per):
            rows.append(
                {
                    "slide": f"S{s}",
                    "patient": patient(s) if patient else f"S{s}",
                    "center": "C",
                    "split": "",
                    "y": int((s + k) % pos_every == 0),
                }
            )
    return pd.DataFrame(rows)


def _no_group_on_both_sides(groups, folds):
    t = pd.DataFrame({"g": groups, "f": folds})
    return (t.groupby("g")["f"].nunique() == 1).all()


def test_grouped_stratified_deterministic():
    df = _df()
    f1, f2 = assign_folds(df, 5, seed=0), assign_folds(df, 5, seed=0)
    assert np.array_equal(f1, f2) and set(f1) == set(range(5))
    assert _no_group_on_both_sides(df.slide, f1)
    # the seed matters: one other seed may coincide on tiny data, five in a row do not
    assert any(not np.array_equal(f1, assign_folds(df, 5, seed=s)) for s in range(1, 6))
    for f in range(5):
        assert set(df.y[f1 == f]) == {0, 1}


def test_patient_grouping_merges_slides():
    df = _df(patient=lambda s: f"P{s // 2}")  # two slides per patient
    f = assign_folds(df, 5, seed=3)
    assert _no_group_on_both_sides(df.patient, f)
    assert len(set(groups_of(df))) == 5


def test_split_test_rows_are_held_out():
    df = _df(n_slides=12)
    df.loc[df.slide.isin(["S0", "S1"]), "split"] = "test"
    f = assign_folds(df, 5)
    assert (f[df.split == "test"] == -1).all() and (f[df.split != "test"] >= 0).all()


def test_explicit_fold_numbers_honoured():
    df = _df(n_slides=6)
    df["split"] = (df.slide.str[1:].astype(int) % 3).astype(str)
    f = assign_folds(df, 3)
    assert np.array_equal(f, df.split.astype(int).to_numpy())
    df.loc[0, "split"] = ""
    with pytest.raises(SplitError, match="all or none|some rows but not others"):
        assign_folds(df, 3)


def test_unlabeled_rows_get_minus_one():
    df = _df()
    df.loc[:5, "y"] = -1
    f = assign_folds(df, 5)
    assert (f[:6] == -1).all()


def test_too_few_groups_or_class_groups():
    with pytest.raises(SplitError, match="only 3 slides"):
        assign_folds(_df(n_slides=3), 5)
    df = _df(n_slides=10)
    df["y"] = (df.slide.isin(["S0", "S1"])).astype(int)  # positives in only 2 slides
    with pytest.raises(SplitError, match="only 2 slide"):
        assign_folds(df, 5)


def test_inner_validation_grouped_and_val_split():
    df = _df(n_slides=10)
    m = inner_validation(df, 0.2, seed=0)
    assert 0 < m.sum() < len(df)
    assert not (set(df.slide[m]) & set(df.slide[~m]))
    assert np.array_equal(m, inner_validation(df, 0.2, seed=0))
    df.loc[df.slide == "S4", "split"] = "val"
    assert np.array_equal(inner_validation(df), (df.slide == "S4").to_numpy())


def test_fold_table(tiny_manifest):
    df = read_manifest(tiny_manifest)
    f = assign_folds(df, 3)
    t = fold_table(df, f)
    assert list(t.columns) == ["slide", "patient", "center", "fold", "n", "n_pos"]
    assert len(t) == 6 and t.n.sum() == 24 and t.n_pos.sum() == (df.y == 1).sum()


@pytest.mark.realdata
def test_real_data_folds(real_manifest):
    df = read_manifest(real_manifest, positive_label="GS")
    assert len(df) == 794 and df.slide.nunique() == 25 and (df.y == 1).sum() == 160
    f = assign_folds(df, 5, seed=0)
    assert np.array_equal(f, assign_folds(df, 5, seed=0))
    assert set(f) == set(range(5))  # every image in exactly one test fold
    assert _no_group_on_both_sides(df.slide, f)
    for k in range(5):
        assert (df.y[f == k] == 1).sum() > 0 and (df.y[f == k] == 0).sum() > 0
        train = df[f != k].reset_index(drop=True)
        m = inner_validation(train, 0.2, seed=0)
        assert not (set(train.slide[m]) & set(train.slide[~m]))
    t = fold_table(df, f)
    assert len(t) == 25 and t.n.sum() == 794
    print(t.groupby("fold")[["n", "n_pos"]].sum())


def test_leave_one_centre_out_folds():
    df = _df(n_slides=6, per=4)
    df["center"] = [("A", "B", "C")[int(s[1:]) % 3] for s in df["slide"]]
    df.loc[df.slide == "S5", "split"] = "test"
    folds = assign_folds(df, n_folds=3, by="center")
    assert assign_folds(df, n_folds=3, by="centre").tolist() == folds.tolist()
    cv = df.split != "test"
    assert (folds[~cv.to_numpy()] == -1).all()
    for k, c in enumerate("ABC"):  # fold k is the k-th centre, whole
        assert set(df.loc[folds == k, "center"]) == {c}
        assert (folds[(df.center == c).to_numpy() & cv.to_numpy()] == k).all()
    with pytest.raises(SplitError, match="one fold per centre.*folds=3"):
        assign_folds(df, n_folds=5, by="center")
    with pytest.raises(SplitError, match="choose 'slide'"):
        assign_folds(df, n_folds=3, by="hospital")
    bad = df.copy()
    bad.loc[0, "center"] = "B"  # slide S0 now in two centres
    with pytest.raises(SplitError, match="several centres"):
        assign_folds(bad, n_folds=3, by="center")
    with pytest.raises(SplitError, match="'center' column"):
        assign_folds(df.assign(center=""), n_folds=3, by="center")
