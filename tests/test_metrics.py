"""glomlib.evaluate.metrics: against scikit-learn, hand-computed cases, a direct DeLong and a bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    recall_score,
    roc_auc_score,
)

from glomlib.evaluate import metrics as M
from glomlib.evaluate import uncertainty as U


def _synthetic(n=300, seed=0, shift=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    latent = rng.normal(size=n) + shift * y
    a = 1 / (1 + np.exp(-(latent + 0.5 * rng.normal(size=n))))
    b = 1 / (1 + np.exp(-(0.6 * latent + 0.9 * rng.normal(size=n))))
    return y, a, b


def test_binary_metrics_match_sklearn():
    y, p, _ = _synthetic()
    m = M.binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["n"] == len(y) and m["n_pos"] == y.sum()


def test_hand_computed_case():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    m = M.binary_metrics(y, p)
    # pairs (pos, neg): 0.9 beats all 3; 0.4 beats 0.2 and 0.1 -> 5/6
    assert m["auc"] == pytest.approx(5 / 6)
    # predictions at 0.5: [1, 0, 1, 0, 0] -> TP 1, FN 1, FP 1, TN 2
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # ECE with 10 bins: each prob alone in its bin -> mean |y - p|
    assert m["ece"] == pytest.approx(np.mean(np.abs(y - p)))


def test_ece_perfect_and_bins():
    y = np.array([0, 0, 1, 1])
    assert M.expected_calibration_error(y, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.0)
    # all in one bin (0.5-0.6): |0.5 - 0.55| = 0.05
    assert M.expected_calibration_error(y, np.full(4, 0.55)) == pytest.approx(0.05)
    t = M.reliability_table(y, np.array([0.05, 0.15, 0.95, 1.0]), n_bins=10)
    assert t["count"].sum() == 4 and t["count"][9] == 2  # 1.0 lands in the last bin


def test_single_class_gives_nan_not_error():
    m = M.binary_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(2 / 3)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="must match"):
        M.binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="only 0"):
        M.binary_metrics([0, 2], [0.5, 0.5])


def test_summarise_format():
    per_fold = [{"auc": 0.883}, {"auc": 0.897}, {"auc": 0.890}]
    s = M.summarise(per_fold)
    assert s["auc"]["mean"] == pytest.approx(0.89)
    assert s["auc"]["std"] == pytest.approx(np.std([0.883, 0.897, 0.890], ddof=1))
    assert s["auc"]["text"] == "0.890 ± 0.007"
    assert M.summarise(pd.DataFrame(per_fold))["auc"]["text"] == "0.890 ± 0.007"
    assert M.format_mean_std(0.8104, 0.0041) == "0.810 ± 0.004"


def _delong_direct(y, a, b):
    """DeLong et al. (1988) by the O(m*n) definition (structural components), for checking the fast version."""
    pos, neg = y == 1, y == 0

    def comps(s):
        psi = (s[pos][:, None] > s[neg][None, :]).astype(float) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    aa, va10, va01 = comps(a)
    ab, vb10, vb01 = comps(b)
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.vstack([va10, vb10]))
    s01 = np.cov(np.vstack([va01, vb01]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    return aa, ab, var


def test_delong_matches_direct_definition_with_ties():
    y, a, b = _synthetic(n=120, seed=3)
    a = np.round(a, 1)  # many ties
    d = U.delong_test(y, a, b)
    aa, ab, var = _delong_direct(y, a, b)
    assert d["auc_a"] == pytest.approx(aa) and d["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert d["auc_b"] == pytest.approx(ab)
    assert d["se"] == pytest.approx(math.sqrt(var))
    from scipy.stats import norm

    assert d["p"] == pytest.approx(2 * norm.sf(abs((aa - ab) / math.sqrt(var))))


def test_delong_single_auc_hand_case():
    # pos scores [0.9, 0.4], neg [0.6, 0.2, 0.1]: V10 = [1, 2/3], V01 = [1/2, 1, 1]
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    a, v = U.delong_auc_variance(y, p)
    expected = np.var([1, 2 / 3], ddof=1) / 2 + np.var([0.5, 1, 1], ddof=1) / 3
    assert a == pytest.approx(5 / 6) and v == pytest.approx(expected)


def test_delong_se_agrees_with_bootstrap():
    y, a, b = _synthetic(n=400, seed=1)
    d = U.delong_test(y, a, b)
    bs = U.bootstrap_auc_difference(y, a, b, n_boot=600, seed=0)
    assert bs["diff"] == pytest.approx(d["diff"])
    assert bs["se"] == pytest.approx(d["se"], rel=0.2)
    assert bs["ci_low"] < d["diff"] < bs["ci_high"]
    assert d["p"] < 0.05  # a is clearly better by construction
    same = U.delong_test(y, a, a)
    assert same["p"] == 1.0 and same["diff"] == 0.0


def test_grouped_bootstrap_is_wider_for_clustered_data():
    rng = np.random.default_rng(0)
    slides = np.repeat(np.arange(20), 15)
    slide_effect = rng.normal(size=20)[slides]  # shared per slide -> correlated images
    y = (rng.random(slides.size) < 0.3).astype(int)
    a = y * 1.0 + slide_effect + rng.normal(size=slides.size) * 0.5
    b = y * 0.5 + slide_effect * 1.5 + rng.normal(size=slides.size) * 0.5
    g = U.bootstrap_auc_difference(y, a, b, groups=slides, n_boot=400, seed=0)
    i = U.bootstrap_auc_difference(y, a, b, n_boot=400, seed=0)
    assert g["grouped"] and not i["grouped"]
    assert g["ci_high"] - g["ci_low"] > i["ci_high"] - i["ci_low"]


def test_pairwise_comparisons_table():
    y, a, b = _synthetic(n=200, seed=2)
    t = U.pairwise_comparisons(y, {"glom": a, "imagenet": b, "scratch": 1 - b}, groups=np.arange(200) // 10, n_boot=100)
    assert list(zip(t["a"], t["b"])) == [("glom", "imagenet"), ("glom", "scratch"), ("imagenet", "scratch")]
    assert {"diff", "boot_ci_low", "boot_ci_high", "delong_p", "text"} <= set(t.columns)


def test_per_group_metrics():
    y, a, _ = _synthetic(n=100)
    df = pd.DataFrame({"y": y, "prob": a, "fold": np.arange(100) % 4, "seed": 0})
    t = M.per_group_metrics(df, ["seed", "fold"])
    assert len(t) == 4 and t["n"].sum() == 100


def test_operating_point_counts_rates_and_slide_cis():
    # 10 images, 4 GS: at 0.5 three GS are called (one missed) and one nonGS is a false alarm
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1, 0.1])
    op = U.operating_point(y, p, threshold=0.5, groups=np.arange(10) // 2, n_boot=300)
    assert (op["tp"], op["fn"], op["fp"], op["tn"], op["n"]) == (3, 1, 1, 5, 10)
    assert op["prevalence"] == pytest.approx(0.4)
    assert op["sensitivity"]["value"] == pytest.approx(0.75) and op["specificity"]["value"] == pytest.approx(5 / 6)
    assert op["ppv"]["value"] == pytest.approx(0.75) and op["npv"]["value"] == pytest.approx(5 / 6)
    for k in ("sensitivity", "specificity", "ppv", "npv"):
        e = op[k]
        assert 0 <= e["ci_low"] <= e["value"] <= e["ci_high"] <= 1 and e["n_valid"] > 200
    assert U.operating_point(y, p, threshold=0.95, n_boot=20)["ppv"]["value"] != U.operating_point(y, p)["ppv"]["value"]
    # nothing called positive: PPV is undefined (NaN), not 0 and not an error
    assert math.isnan(U.operating_point(y, p, threshold=0.99, n_boot=20)["ppv"]["value"])


def test_operating_point_slide_ci_wider_than_image_ci():
    rng = np.random.default_rng(1)
    slide = np.repeat(np.arange(20), 15)
    y = np.repeat(rng.random(20) < 0.4, 15).astype(int)  # every glomerulus of a slide has one label
    p = np.clip(0.5 * y + np.repeat(rng.normal(0.25, 0.2, 20), 15) + rng.normal(0, 0.02, 300), 0, 1)
    grouped = U.operating_point(y, p, groups=slide, n_boot=400)["sensitivity"]
    flat = U.operating_point(y, p, n_boot=400)["sensitivity"]
    assert grouped["ci_high"] - grouped["ci_low"] > 1.5 * (flat["ci_high"] - flat["ci_low"])


def test_roc_band_holds_the_curve_and_stays_in_unit_square():
    y, a, _ = _synthetic(200, seed=2)
    band = U.roc_band(y, a, groups=np.arange(200) // 5, n_boot=200)
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, a)
    assert np.allclose(band["fpr"], fpr) and np.allclose(band["tpr"], tpr)
    point = np.interp(band["grid"], fpr, tpr)
    inside = (band["tpr_low"] <= point + 1e-9) & (point <= band["tpr_high"] + 1e-9)
    assert inside.mean() > 0.9 and band["n_valid"] == 200
    assert band["tpr_low"].min() >= 0 and band["tpr_high"].max() <= 1
    assert (band["tpr_high"] - band["tpr_low"])[10:90].mean() > 0.02  # a real band, not a line


def test_mean_ci():
    r = U.mean_ci([0.1, 0.2, 0.3, 0.4, np.nan], n_boot=500)
    assert r["value"] == pytest.approx(0.25) and r["n"] == 4
    assert 0.1 <= r["ci_low"] < 0.25 < r["ci_high"] <= 0.4
    assert math.isnan(U.mean_ci([], n_boot=10)["value"])
