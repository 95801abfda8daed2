"""Confidence intervals and paired AUC tests: one slide (group) bootstrap, DeLong's test, the operating point.

The operating point gives the confusion matrix, sensitivity, specificity, PPV and NPV with CIs; a ROC band too.

Glomeruli of one slide look alike, so every bootstrap here resamples whole groups (slides) with replacement
(:func:`group_resamples`); without groups each image is its own group.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from glomlib.evaluate.metrics import METRICS, _as_arrays, auc, binary_metrics, confusion_counts


def group_resamples(groups: Any, n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of ``n_boot`` cluster-bootstrap resamples: whole groups drawn with replacement."""
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        groups = np.asarray(groups)
        if groups.size != n:
            raise ValueError(f"groups has {groups.size} entries but there are {n} images; give one per image.")
        _, inv = np.unique(groups.astype(str), return_inverse=True)
        order = np.argsort(inv, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inv[order])) + 1)
    rng = np.random.default_rng(seed)
    for _ in range(int(n_boot) if members else 0):
        yield np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])


def _interval(draws: list[float], alpha: float) -> tuple[float, float]:
    d = np.asarray(draws)
    return tuple(float(v) for v in np.quantile(d, [alpha / 2, 1 - alpha / 2])) if d.size else (math.nan, math.nan)


def bootstrap_ci(
    y: Any,
    prob: Any,
    metric: Any = None,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap ``1 - alpha`` CIs of a metric over :func:`group_resamples`.

    ``metric``: ``None`` (every metric of :func:`binary_metrics` at ``threshold``), a name of :data:`METRICS`, or a
    callable ``f(y, prob) -> float | dict``. Returns ``{name: {"value", "ci_low", "ci_high", "n_valid"}}``;
    resamples where a metric is NaN (e.g. AUC of one class) are left out and ``n_valid`` counts the rest.
    """
    y, prob = _as_arrays(y, prob)

    def compute(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        if metric is None or isinstance(metric, str):
            full = binary_metrics(yy, pp, threshold=threshold)
            return {k: float(full[k]) for k in (METRICS if metric is None else (metric,))}
        v = metric(yy, pp)
        return {k: float(x) for k, x in v.items()} if isinstance(v, Mapping) else {"value": float(v)}

    point = compute(y, prob)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for idx in group_resamples(groups, y.size, n_boot, seed):
        for k, v in compute(y[idx], prob[idx]).items():
            if math.isfinite(v):
                draws[k].append(v)
    out = {}
    for k, v in point.items():
        lo, hi = _interval(draws[k], alpha)
        out[k] = {"value": v, "ci_low": lo, "ci_high": hi, "n_valid": len(draws[k])}
    return out


def bootstrap_auc_difference(
    y: Any, prob_a: Any, prob_b: Any, groups: Any = None, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Percentile bootstrap CI of ``AUC(a) - AUC(b)`` on the same images (single-class resamples skipped)."""
    y, pa = _as_arrays(y, prob_a)
    _, pb = _as_arrays(y, prob_b)
    diffs = [auc(y[i], pa[i]) - auc(y[i], pb[i]) for i in group_resamples(groups, y.size, n_boot, seed)]
    diffs = [d for d in diffs if math.isfinite(d)]
    lo, hi = _interval(diffs, alpha)
    se = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
    return {
        "diff": auc(y, pa) - auc(y, pb),
        "ci_low": lo,
        "ci_high": hi,
        "se": se,
        "n_valid": len(diffs),
        "n_boot": int(n_boot),
        "grouped": groups is not None,
    }


def _fast_delong(preds_sorted: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu, IEEE SPL 21(11), 2014): ``preds_sorted`` (k, n) with the ``m`` positives first.
    Returns (aucs (k,), covariance (k, k))."""
    from scipy.stats import rankdata

    n = preds_sorted.shape[1] - m
    tx = rankdata(preds_sorted[:, :m], axis=1)  # midranks among the positives
    ty = rankdata(preds_sorted[:, m:], axis=1)  # ... among the negatives
    tz = rankdata(preds_sorted, axis=1)  # ... among all
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # ... of the negatives
    return aucs, np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n


def _sorted_by_label(y: Any, *probs: Any) -> tuple[np.ndarray, int]:
    y, _ = _as_arrays(y, probs[0])
    order = np.argsort(-y, kind="stable")
    return np.vstack([_as_arrays(y, p)[1][order] for p in probs]), int(y.sum())


def delong_auc_variance(y: Any, prob: Any) -> tuple[float, float]:
    """AUC and its DeLong variance for one classifier."""
    aucs, cov = _fast_delong(*_sorted_by_label(y, prob))
    return float(aucs[0]), float(cov[0, 0])


def delong_test(y: Any, prob_a: Any, prob_b: Any) -> dict[str, float]:
    """Paired two-sided DeLong test of H0: AUC(a) == AUC(b) on the same images: ``auc_a``, ``auc_b``, ``diff``
    (a - b), ``se``, ``z``, ``p`` and a DeLong 95% CI of the difference."""
    from scipy.stats import norm

    preds, m = _sorted_by_label(y, prob_a, prob_b)
    if m == 0 or m == preds.shape[1]:
        raise ValueError("DeLong test needs both positive and negative images.")
    aucs, cov = _fast_delong(preds, m)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        se, z, p = 0.0, (0.0 if diff == 0 else math.copysign(math.inf, diff)), (1.0 if diff == 0 else 0.0)
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    q = norm.ppf(0.975)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": float(se),
        "z": float(z),
        "p": float(p),
        "ci_low": diff - q * se,
        "ci_high": diff + q * se,
    }


def pairwise_comparisons(
    y: Any, probs: Mapping[str, Any], groups: Any = None, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """For every pair of models: AUC difference, grouped-bootstrap 95% CI and DeLong p."""
    rows = []
    for a, b in itertools.combinations(list(probs), 2):
        bs = bootstrap_auc_difference(y, probs[a], probs[b], groups=groups, n_boot=n_boot, seed=seed)
        dl = delong_test(y, probs[a], probs[b])
        rows.append(
            {
                "a": a,
                "b": b,
                "auc_a": dl["auc_a"],
                "auc_b": dl["auc_b"],
                "diff": dl["diff"],
                "boot_ci_low": bs["ci_low"],
                "boot_ci_high": bs["ci_high"],
                "boot_n_valid": bs["n_valid"],
                "delong_z": dl["z"],
                "delong_p": dl["p"],
                "text": f"{dl['diff']:+.3f} [{bs['ci_low']:+.3f}, {bs['ci_high']:+.3f}], DeLong p = {dl['p']:.3g}",
            }
        )
    return pd.DataFrame(rows)


def _rates(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    tn, fp, fn, tp = confusion_counts(y, prob, threshold).values()

    def ratio(a: int, b: int) -> float:
        return a / (a + b) if a + b else math.nan

    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn)}


def operating_point(
    y: Any,
    prob: Any,
    threshold: float = 0.5,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The confusion matrix at ``threshold`` (``tp``, ``fn``, ``fp``, ``tn``, ``n``, ``prevalence``) and the
    sensitivity, specificity, PPV and NPV, each a :func:`bootstrap_ci` entry over whole groups (slides)."""
    y, prob = _as_arrays(y, prob)
    out: dict[str, Any] = {"threshold": float(threshold), "n": int(y.size), **confusion_counts(y, prob, threshold)}
    out["prevalence"] = float(y.mean()) if y.size else math.nan
    rates = bootstrap_ci(
        y, prob, lambda yy, pp: _rates(yy, pp, threshold), groups=groups, n_boot=n_boot, seed=seed, alpha=alpha
    )
    return {**out, **rates}


def roc_band(
    y: Any, prob: Any, groups: Any = None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, n_grid: int = 101
) -> dict[str, Any]:
    """The ROC curve (``fpr``, ``tpr``) and a pointwise percentile band of the sensitivity on a fixed grid of
    false-positive rates (``grid``, ``tpr_low``, ``tpr_high``) over :func:`group_resamples` (one-class resamples
    left out, ``n_valid`` counts the rest)."""
    from sklearn.metrics import roc_curve

    y, prob = _as_arrays(y, prob)
    grid = np.linspace(0.0, 1.0, n_grid)
    fpr, tpr, _ = roc_curve(y, prob)
    curves = []
    for idx in group_resamples(groups, y.size, n_boot, seed):
        if 0 < y[idx].sum() < idx.size:
            f, t, _ = roc_curve(y[idx], prob[idx])
            curves.append(np.interp(grid, f, t))
    lo, hi = np.quantile(np.asarray(curves), [alpha / 2, 1 - alpha / 2], axis=0) if curves else (grid * np.nan,) * 2
    return {"fpr": fpr, "tpr": tpr, "grid": grid, "tpr_low": lo, "tpr_high": hi, "n_valid": len(curves)}


def mean_ci(values: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Mean of ``values`` (one per independent unit, e.g. a biopsy's error) with a percentile bootstrap CI."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    draws = [float(v[i].mean()) for i in group_resamples(None, v.size, n_boot, seed)]
    lo, hi = _interval(draws, alpha)
    return {"value": float(v.mean()) if v.size else math.nan, "ci_low": lo, "ci_high": hi, "n": int(v.size)}
