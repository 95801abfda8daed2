"""Issue 18 library swaps, checked once on the real data: the hand-written functions that were replaced (kept
here verbatim as the reference) and the library-backed ones give the same figures.

Scores: two simple image statistics of the 794 real glomeruli (mean red and mean green at 32 px), labels GS vs
nonGS, groups = slides. Compared: confusion counts (sklearn ``confusion_matrix``), DeLong AUCs, variances and
p-values (``scipy.stats.rankdata`` midranks), the probe AUC (``metrics.auc``), and the slide-bootstrap CIs (one
``uncertainty.group_resamples``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from glomlib.data.images import read_rgb
from glomlib.evaluate import metrics as M
from glomlib.evaluate import uncertainty as U


# ------------------------------------------------------------------ the replaced implementations (reference)
def old_confusion(y, pred):
    return (
        int(np.sum((pred == 1) & (y == 1))),
        int(np.sum((pred == 0) & (y == 0))),
        int(np.sum((pred == 1) & (y == 0))),
        int(np.sum((pred == 0) & (y == 1))),
    )


def old_midrank(x):
    order = np.argsort(x, kind="mergesort")
    z = x[order]
    n = x.size
    t = np.zeros(n, dtype=float)
    i = 0
    while i < n:
        j = i
        while j < n and z[j] == z[i]:
            j += 1
        t[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, dtype=float)
    out[order] = t
    return out


def old_fast_delong(preds_sorted, m):
    n = preds_sorted.shape[1] - m
    k = preds_sorted.shape[0]
    tx, ty, tz = np.empty((k, m)), np.empty((k, n)), np.empty((k, m + n))
    for r in range(k):
        tx[r] = old_midrank(preds_sorted[r, :m])
        ty[r] = old_midrank(preds_sorted[r, m:])
        tz[r] = old_midrank(preds_sorted[r])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n


def old_delong_p(y, a, b):
    order = np.argsort(-y, kind="stable")
    aucs, cov = old_fast_delong(np.vstack([a[order], b[order]]), int(y.sum()))
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return aucs, cov, float(2 * norm.sf(abs((aucs[0] - aucs[1]) / se)))


def old_probe_auc(y, score):
    return float("nan") if len(np.unique(y)) < 2 else float(roc_auc_score(y, score))


def old_bootstrap_auc_difference(y, pa, pb, groups, n_boot, seed):
    rng = np.random.default_rng(seed)
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inv, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(inv[order])) + 1)
    g = len(members)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, g, size=g)])
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(roc_auc_score(y[idx], pa[idx]) - roc_auc_score(y[idx], pb[idx]))
    return np.quantile(diffs, [0.025, 0.975]), len(diffs)


# ------------------------------------------------------------------------------------------- the comparison
@pytest.fixture(scope="module")
def real_scores(real_manifest):
    df = pd.read_csv(real_manifest, keep_default_na=False)
    df = df[df["label"].isin(["GS", "nonGS"])].reset_index(drop=True)
    img = np.stack([read_rgb(p, 32) for p in df["path"]]).astype(float)
    y = (df["label"] == "GS").to_numpy().astype(int)
    return y, img[..., 0].mean((1, 2)) / 255, img[..., 1].mean((1, 2)) / 255, df["slide"].astype(str).to_numpy()


def test_swapped_functions_give_the_old_figures_on_real_data(real_scores):
    y, a, b, slides = real_scores
    assert y.size > 700 and 0 < y.sum() < y.size
    for thr in (0.3, 0.5, float(np.median(a))):
        pred = (a >= thr).astype(int)
        tp, tn, fp, fn = old_confusion(y, pred)
        m = M.binary_metrics(y, a, threshold=thr)
        assert m["sensitivity"] == (tp / (tp + fn) if tp + fn else m["sensitivity"])
        assert m["accuracy"] == (tp + tn) / y.size
    old_aucs, old_cov, old_p = old_delong_p(y, a, b)
    new = U.delong_test(y, a, b)
    var_new = U.delong_auc_variance(y, a)[1]
    print(
        f"\nDeLong AUC(red) old {old_aucs[0]:.12f} new {new['auc_a']:.12f}; AUC(green) old {old_aucs[1]:.12f} "
        f"new {new['auc_b']:.12f}; p old {old_p:.12g} new {new['p']:.12g}; var old {old_cov[0, 0]:.6g} new "
        f"{var_new:.6g}"
    )
    assert abs(old_aucs[0] - new["auc_a"]) < 1e-9 and abs(old_aucs[1] - new["auc_b"]) < 1e-9
    assert abs(old_p - new["p"]) < 1e-9 and abs(old_cov[0, 0] - var_new) < 1e-12
    for s in (a, b, -a):
        assert abs(old_probe_auc(y, s) - M.auc(y, s)) < 1e-12
    (lo, hi), n_valid = old_bootstrap_auc_difference(y, a, b, slides, 300, 0)
    bs = U.bootstrap_auc_difference(y, a, b, groups=slides, n_boot=300, seed=0)
    print(
        f"slide-bootstrap CI old [{lo:.9f}, {hi:.9f}] ({n_valid}) new [{bs['ci_low']:.9f}, {bs['ci_high']:.9f}] "
        f"({bs['n_valid']})"
    )
    assert abs(lo - bs["ci_low"]) < 1e-9 and abs(hi - bs["ci_high"]) < 1e-9 and n_valid == bs["n_valid"]
