"""Tests for several raters (glomlib.data.raters, read_manifest(label_source=...), glomlib.review.agreement):
kappas against scikit-learn and the published worked example, consensus with ties reported, training labels
from a chosen rater or the consensus, and the model measured against each rater, on real glomeruli-pas labels
with planted disagreements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from glomlib.data import raters
from glomlib.data.manifest import ManifestError, read_manifest
from glomlib.review import agreement


def test_fleiss_kappa_worked_example():
    """Fleiss (1971) as reproduced on Wikipedia ("Fleiss' kappa", worked example): 10 items, 14 raters, 5
    categories; kappa = 0.210 (P_bar = 0.378, P_e = 0.213)."""
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert raters.fleiss_kappa(table) == pytest.approx(0.20993, abs=5e-5)
    with pytest.raises(ValueError, match="same number"):
        raters.fleiss_kappa(np.array([[1, 1], [2, 1]]))


def test_fleiss_equals_scotts_pi_for_two_raters():
    rng = np.random.default_rng(0)
    a = rng.choice(["GS", "nonGS"], 300, p=[0.3, 0.7])
    b = np.where(rng.random(300) < 0.15, np.where(a == "GS", "nonGS", "GS"), a)
    df = pd.DataFrame({"label_a": a, "label_b": b})
    po = (a == b).mean()
    pj = np.array([((a == c).sum() + (b == c).sum()) / 600 for c in ("GS", "nonGS")])
    scott = (po - (pj**2).sum()) / (1 - (pj**2).sum())
    assert raters.fleiss_kappa(raters.category_counts(df)) == pytest.approx(scott, abs=1e-12)


def test_cohen_kappa_edge_cases():
    assert raters.cohen_kappa(["a", "a"], ["a", "a"]) == 1.0
    assert np.isnan(raters.cohen_kappa(["a", ""], ["", "b"]))
    assert raters.cohen_kappa(["a", "b", "a", "b"], ["b", "a", "b", "a"]) == pytest.approx(-1.0)


def _multi_rater_manifest(real_manifest, tmp_path):
    """rater1 = the published labels; rater2 flips 40 planted rows; rater3 flips 30 other rows plus 10 of
    rater2's and leaves 12 of rater2's flipped rows unrated (ties); the `label` column keeps the published one."""
    df = pd.read_csv(real_manifest, dtype=str, keep_default_na=False)
    n = len(df)
    rng = np.random.default_rng(12)
    flip = {"GS": "nonGS", "nonGS": "GS"}
    order = rng.permutation(n)
    r2_rows, r3_only = order[:40], order[40:70]
    shared, unrated = r2_rows[:10], r2_rows[10:22]
    r1 = df["label"].to_numpy().copy()
    r2 = r1.copy()
    r2[r2_rows] = [flip[v] for v in r1[r2_rows]]
    r3 = r1.copy()
    r3[np.r_[r3_only, shared]] = [flip[v] for v in r1[np.r_[r3_only, shared]]]
    r3[unrated] = ""
    df["label_rater1"], df["label_rater2"], df["label_rater3"] = r1, r2, r3
    # keep paths valid from the new folder
    base = real_manifest.parent
    for c in ("path", "mask"):
        df[c] = [str((base / p).resolve()) for p in df[c]]
    out = tmp_path / "raters.csv"
    df.to_csv(out, index=False)
    return (
        out,
        df,
        {
            "shared": set(shared.tolist()),
            "unrated": set(unrated.tolist()),
            "r2": set(r2_rows.tolist()),
            "r3": set(r3_only.tolist()),
        },
    )


@pytest.mark.realdata
def test_multi_rater_real_labels_kappas_consensus_and_training_labels(real_manifest, tmp_path):
    path, df, planted = _multi_rater_manifest(real_manifest, tmp_path)
    rep = raters.agreement_report(df)
    assert rep["raters"] == ["rater1", "rater2", "rater3"]
    for _, r in rep["pairwise"].iterrows():
        a, b = df[f"label_{r['rater_a']}"], df[f"label_{r['rater_b']}"]
        both = (a != "") & (b != "")
        assert r["n"] == both.sum()
        assert r["kappa"] == pytest.approx(cohen_kappa_score(a[both], b[both]), abs=1e-12)
    k12 = rep["pairwise"].set_index(["rater_a", "rater_b"]).loc[("rater1", "rater2"), "kappa"]
    assert 0.7 < k12 < 1.0  # 40 of 794 labels differ
    # Fleiss over the rows all three rated equals the textbook formula applied by hand
    full = df[df["label_rater3"] != ""]
    assert rep["fleiss"]["n"] == len(df) - len(planted["unrated"]) == len(full)
    counts = raters.category_counts(full, ["label_rater1", "label_rater2", "label_rater3"]).to_numpy()
    n_, k_ = counts.shape[0], 3
    p_j = counts.sum(0) / (n_ * k_)
    P_i = ((counts**2).sum(1) - k_) / (k_ * (k_ - 1))
    assert rep["fleiss"]["kappa"] == pytest.approx((P_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum()))
    assert set(rep["per_group"]["center"]) == set(df["center"]) and rep["per_group"]["images"].sum() == len(df)
    # ties: exactly the rows rater3 left empty (rater1 and rater2 disagree there)
    assert set(rep["ties"].index) == planted["unrated"]
    cons = rep["consensus"]["consensus"]
    for i in planted["shared"]:
        assert cons[i] != df.at[i, "label_rater1"]  # two of three flipped: the consensus follows them
    for i in planted["r2"] - planted["shared"] - planted["unrated"]:
        assert cons[i] == df.at[i, "label_rater1"]

    from glomlib.review.audit import show_labels

    shown = show_labels(read_manifest(path, positive_label="GS"), tmp_path)  # notebook 01's section
    assert shown["raters"]["fleiss"]["kappa"] == pytest.approx(rep["fleiss"]["kappa"])
    assert (tmp_path / "rater_pairwise_kappa.csv").is_file() and len(shown["changes"]) == 0

    # training labels: a chosen rater, or the consensus with ties raised / skipped and recorded
    r2 = read_manifest(path, positive_label="GS", label_source="rater2")
    assert (r2["label"] == df["label_rater2"]).all() and (r2["manifest_label"] == df["label"]).all()
    assert r2.attrs["label_source"] == "rater2"
    with pytest.raises(ManifestError, match="label-tie|tie"):
        read_manifest(path, positive_label="GS", label_source="consensus")
    skipped = tmp_path / "ties.csv"
    with pytest.warns(UserWarning):
        c = read_manifest(path, positive_label="GS", label_source="consensus", on_error="skip", skipped_out=skipped)
    assert len(c) == len(df) - len(planted["unrated"])
    rec = pd.read_csv(skipped)
    assert set(rec["row"] - 1) == planted["unrated"] and rec["reason"].str.contains("tie").all()
    with pytest.raises(ManifestError, match="rater9"):
        read_manifest(path, positive_label="GS", label_source="rater9")

    # the model against each rater and the consensus, next to the raters' agreement with each other
    man = read_manifest(path, positive_label="GS")
    rng = np.random.default_rng(3)
    y1 = (df["label_rater1"] == "GS").to_numpy()
    prob = np.where(y1, 0.9, 0.1)
    wrong = rng.choice(len(df), 25, replace=False)
    prob[wrong] = 1 - prob[wrong]
    pred = pd.DataFrame({"path": man["path"], "prob": prob})
    t = agreement.readers(pred, man, "GS", "nonGS")
    res = agreement.model_vs_raters(t).set_index("reference")
    calls = np.where(prob >= 0.5, "GS", "nonGS")
    for r in ("rater1", "rater2"):
        assert res.at[r, "model_kappa"] == pytest.approx(cohen_kappa_score(calls, df[f"label_{r}"]), abs=1e-12)
    ok = df["label_rater3"] != ""
    assert res.at["rater3", "model_kappa"] == pytest.approx(
        cohen_kappa_score(calls[ok], df.loc[ok, "label_rater3"]), abs=1e-12
    )
    assert res.at["rater1", "model_accuracy"] == pytest.approx(1 - 25 / len(df))
    assert res.at["consensus", "images"] == len(df) - len(planted["unrated"])
    km = agreement.kappa_matrix(t)
    assert km.loc["rater1", "rater2"] == pytest.approx(k12) and km.loc["model", "rater1"] == km.loc["rater1", "model"]
    assert res.at["rater1", "rater_kappa_with_other_raters"] == pytest.approx(
        np.mean([km.loc["rater1", "rater2"], km.loc["rater1", "rater3"]])
    )


def test_run_agreement_from_a_run_folder(make_manifest, tmp_path):
    """The model of a run folder against two raters: the same numbers as scikit-learn on the same calls."""
    import json

    rater2 = lambda s, k: ("M1", "M0")[(s + k + (k == 0)) % 2]  # noqa: E731  disagrees on every k == 0 image
    manifest = make_manifest(extra_columns={"label_r1": lambda s, k: ("M1", "M0")[(s + k) % 2], "label_r2": rater2})
    df = read_manifest(manifest, positive_label="M1")
    prob = np.where(df["y"] == 1, 0.8, 0.3)
    prob[[1, 7]] = 1 - prob[[1, 7]]
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(
        {"path": df["path"], "slide": df["slide"], "label": df["label"], "y": df["y"], "prob": prob, "fold": 0}
    ).to_csv(run / "predictions.csv", index=False)
    (run / "config.json").write_text(json.dumps({"data": str(manifest)}))
    res, km = agreement.run_agreement(run)
    calls = np.where(prob >= 0.5, "M1", "M0")
    res = res.set_index("reference")
    for r in ("r1", "r2"):
        assert res.at[r, "model_kappa"] == pytest.approx(cohen_kappa_score(calls, df[f"label_{r}"]))
    assert km.loc["r1", "r2"] == pytest.approx(cohen_kappa_score(df["label_r1"], df["label_r2"]))
    assert res.at["r1", "rater_kappa_with_other_raters"] == pytest.approx(km.loc["r1", "r2"])


def _cohen_reference(a, b) -> float:
    """The hand-written Cohen's kappa raters.py had before scikit-learn's replaced it."""
    a, b = np.asarray([str(x) for x in a], object), np.asarray([str(x) for x in b], object)
    both = (a != "") & (b != "")
    a, b = a[both], b[both]
    if len(a) == 0:
        return float("nan")
    cats = sorted(set(a) | set(b))
    idx = {c: k for k, c in enumerate(cats)}
    m = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b):
        m[idx[x], idx[y]] += 1
    n = m.sum()
    po, pe = np.trace(m) / n, float((m.sum(0) * m.sum(1)).sum()) / n**2
    if pe == 1.0:
        return 1.0 if po == 1.0 else float("nan")
    return float((po - pe) / (1 - pe))


def _fleiss_reference(counts) -> float:
    """The hand-written Fleiss' kappa raters.py had before statsmodels' replaced it."""
    t = np.asarray(counts, float)
    n0, n_items = t.sum(axis=1)[0], t.shape[0]
    p_j = t.sum(axis=0) / (n_items * n0)
    p_i = ((t * t).sum(axis=1) - n0) / (n0 * (n0 - 1))
    p_bar, p_e = p_i.mean(), float((p_j**2).sum())
    return float("nan") if p_e == 1.0 else float((p_bar - p_e) / (1 - p_e))


@pytest.mark.realdata
def test_library_kappas_match_the_hand_written_ones_on_real_labels(real_manifest, tmp_path):
    _, df, _ = _multi_rater_manifest(real_manifest, tmp_path)
    cols = raters.rater_columns(df)
    for ca in cols:
        for cb in cols:
            assert raters.cohen_kappa(df[ca], df[cb]) == pytest.approx(_cohen_reference(df[ca], df[cb]), abs=1e-9)
    for sub in (df, df[df["center"] == df["center"].iloc[0]], df.iloc[:50]):
        complete = sub[(sub[cols] != "").all(axis=1)]
        table = raters.category_counts(complete, cols)
        k = raters.fleiss_kappa(table)
        assert np.isfinite(k) and k == pytest.approx(_fleiss_reference(table), abs=1e-9)
    one = pd.DataFrame({"label_a": ["x"] * 4, "label_b": ["x"] * 4})
    assert raters.cohen_kappa(one["label_a"], one["label_b"]) == _cohen_reference(one["label_a"], one["label_b"]) == 1.0
    assert np.isnan(raters.fleiss_kappa(raters.category_counts(one))) and np.isnan(
        _fleiss_reference(raters.category_counts(one))
    )
