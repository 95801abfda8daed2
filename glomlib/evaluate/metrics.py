"""Classification metrics for a binary glomerular lesion task, in the study's format.

* :func:`binary_metrics` — AUC, accuracy, weighted F1 (the study's three) plus balanced accuracy,
  sensitivity, specificity, Brier score and expected calibration error (ECE) for one fold.
* :func:`summarise` — mean ± std over folds, formatted like the study ("0.890 ± 0.007").
* :func:`bootstrap_auc_difference` — bootstrap 95% CI of a paired AUC difference, resampling whole
  slides (groups) so that images of one slide stay together.
* :func:`delong_test` — paired DeLong test of two correlated AUCs (fast algorithm of Sun & Xu 2014).
* :func:`reliability_table` — the numbers behind a reliability diagram.

Conventions: ``y`` is 1 for the positive label and 0 for the negative one; ``prob`` is the predicted
probability of the positive label. Standard deviations over folds use ``ddof=1`` (sample std).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: Metric names in the order reports show them (the study's three first).
METRICS = ("auc", "accuracy", "f1_weighted", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece")

#: Human-readable names for tables.
METRIC_LABELS = {
    "auc": "AUC",
    "accuracy": "Accuracy",
    "f1_weighted": "Weighted F1",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "brier": "Brier score",
    "ece": "ECE",
}


def _as_arrays(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, dtype=float).ravel()
    if y.shape != prob.shape:
        raise ValueError(f"y has {y.size} values but prob has {prob.size}; they must match one-to-one.")
    if y.size and not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"y must contain only 0 (negative) and 1 (positive); got {sorted(set(np.unique(y)))}.")
    if np.any(~np.isfinite(prob)):
        raise ValueError("prob contains NaN or inf; check the model's outputs.")
    return y, prob


def auc(y: Any, prob: Any) -> float:
    """ROC AUC (Mann-Whitney, ties count one half); NaN when only one class is present."""
    y, prob = _as_arrays(y, prob)
    if len(np.unique(y)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, prob))


def expected_calibration_error(y: Any, prob: Any, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins on the positive-class probability.

    ECE = sum_b (n_b / N) * |mean(y in b) - mean(prob in b)|. Probability 1.0 falls in the last bin.
    """
    y, prob = _as_arrays(y, prob)
    if y.size == 0:
        return float("nan")
    table = reliability_table(y, prob, n_bins=n_bins)
    n = table["count"].sum()
    nz = table["count"] > 0
    return float(np.sum(table["count"][nz] / n * np.abs(table["frac_pos"][nz] - table["mean_prob"][nz])))


def reliability_table(y: Any, prob: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin ``bin_lo``, ``bin_hi``, ``count``, ``mean_prob``, ``frac_pos`` (NaN in empty bins)."""
    y, prob = _as_arrays(y, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(prob, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac_pos = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return {"bin_lo": edges[:-1], "bin_hi": edges[1:], "count": count, "mean_prob": mean_prob, "frac_pos": frac_pos}


def binary_metrics(y: Any, prob: Any, threshold: float = 0.5, n_bins: int = 10) -> dict[str, float]:
    """All per-fold metrics of :data:`METRICS` for labels ``y`` and positive-class probabilities ``prob``.

    Predictions are ``prob >= threshold``. Metrics undefined for the data (e.g. AUC with one class,
    sensitivity without positives) are NaN rather than an error.
    """
    from sklearn.metrics import f1_score

    y, prob = _as_arrays(y, prob)
    pred = (prob >= threshold).astype(int)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    sens = tp / (tp + fn) if (tp + fn) else float("nan")
    spec = tn / (tn + fp) if (tn + fp) else float("nan")
    if math.isnan(sens) or math.isnan(spec):
        bal = float(np.nanmean([sens, spec])) if not (math.isnan(sens) and math.isnan(spec)) else float("nan")
    else:
        bal = (sens + spec) / 2
    n = y.size
    return {
        "auc": auc(y, prob),
        "accuracy": (tp + tn) / n if n else float("nan"),
        "f1_weighted": float(f1_score(y, pred, average="weighted", zero_division=0)) if n else float("nan"),
        "balanced_accuracy": float(bal),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "brier": float(np.mean((prob - y) ** 2)) if n else float("nan"),
        "ece": expected_calibration_error(y, prob, n_bins=n_bins),
        "n": int(n),
        "n_pos": int(np.sum(y == 1)),
    }


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``0.890 ± 0.007`` (the study's format)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(per_fold: Any, metrics: Sequence[str] = METRICS, digits: int = 3) -> dict[str, dict[str, Any]]:
    """Mean ± std over folds (and seeds) for each metric.

    ``per_fold`` is a list of dicts (one per fold, as :func:`binary_metrics` returns) or a DataFrame with one
    row per fold. Returns ``{metric: {"mean", "std", "n", "text"}}`` where ``text`` is ``"0.890 ± 0.007"``;
    std is the sample standard deviation (ddof=1) and NaN folds are ignored.
    """
    import pandas as pd

    df = per_fold if isinstance(per_fold, pd.DataFrame) else pd.DataFrame(list(per_fold))
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        if m not in df.columns:
            continue
        v = pd.to_numeric(df[m], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        mean = float(v.mean()) if v.size else float("nan")
        std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        out[m] = {"mean": mean, "std": std, "n": int(v.size), "text": format_mean_std(mean, std, digits)}
    return out


# --------------------------------------------------------------------------------------------------------
# Paired comparison of two AUCs on the same images
# --------------------------------------------------------------------------------------------------------

def bootstrap_auc_difference(y: Any, prob_a: Any, prob_b: Any, groups: Any = None, n_boot: int = 2000,
                             seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Bootstrap (percentile) CI of ``AUC(a) - AUC(b)`` on the same images.

    With ``groups`` (e.g. slide IDs) whole groups are resampled with replacement (a cluster bootstrap),
    which respects the correlation between glomeruli of one slide; otherwise images are resampled.
    Resamples with a single class are skipped (``n_valid`` reports how many were used).
    """
    y, pa = _as_arrays(y, prob_a)
    _, pb = _as_arrays(y, prob_b)
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(y.size)]
    else:
        groups = np.asarray(groups)
        if groups.size != y.size:
            raise ValueError("groups must have one entry per image.")
        _, inv = np.unique(groups, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.flatnonzero(np.diff(inv[order])) + 1
        members = np.split(order, bounds)
    g = len(members)
    diffs = []
    for _ in range(n_boot):
        pick = rng.integers(0, g, size=g)
        idx = np.concatenate([members[k] for k in pick])
        yy = y[idx]
        if yy.min() == yy.max():
            continue
        diffs.append(roc_auc_score(yy, pa[idx]) - roc_auc_score(yy, pb[idx]))
    diffs_arr = np.asarray(diffs)
    point = auc(y, pa) - auc(y, pb)
    if diffs_arr.size == 0:
        lo = hi = float("nan")
    else:
        lo, hi = np.quantile(diffs_arr, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(point), "ci_low": float(lo), "ci_high": float(hi),
            "se": float(diffs_arr.std(ddof=1)) if diffs_arr.size > 1 else float("nan"),
            "n_valid": int(diffs_arr.size), "n_boot": int(n_boot),
            "grouped": groups is not None}


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based; ties get the average rank), as in Sun & Xu (2014)."""
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


def _fast_delong(preds_sorted: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014). ``preds_sorted``: (k, n) scores with the ``m`` positives first.

    Returns (aucs (k,), covariance (k, k)).
    """
    n = preds_sorted.shape[1] - m
    pos = preds_sorted[:, :m]
    neg = preds_sorted[:, m:]
    k = preds_sorted.shape[0]
    tx = np.empty((k, m))
    ty = np.empty((k, n))
    tz = np.empty((k, m + n))
    for r in range(k):
        tx[r] = _midrank(pos[r])
        ty[r] = _midrank(neg[r])
        tz[r] = _midrank(preds_sorted[r])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n          # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m    # ... of the negatives
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def delong_auc_variance(y: Any, prob: Any) -> tuple[float, float]:
    """AUC and its DeLong variance for one classifier."""
    y, prob = _as_arrays(y, prob)
    order = np.argsort(-y, kind="stable")
    m = int(y.sum())
    aucs, cov = _fast_delong(prob[order][None, :], m)
    return float(aucs[0]), float(cov[0, 0])


def delong_test(y: Any, prob_a: Any, prob_b: Any) -> dict[str, float]:
    """Paired two-sided DeLong test of H0: AUC(a) == AUC(b) on the same images.

    Returns ``auc_a``, ``auc_b``, ``diff`` (a - b), ``se`` of the difference, ``z`` and ``p``, plus a
    DeLong 95% CI of the difference. Implements the fast algorithm of Sun & Xu, IEEE SPL 21(11), 2014.
    """
    y, pa = _as_arrays(y, prob_a)
    _, pb = _as_arrays(y, prob_b)
    m = int(y.sum())
    if m == 0 or m == y.size:
        raise ValueError("DeLong test needs both positive and negative images.")
    order = np.argsort(-y, kind="stable")
    preds = np.vstack([pa[order], pb[order]])
    aucs, cov = _fast_delong(preds, m)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    from scipy.stats import norm

    if var <= 0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        se = 0.0
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    q = norm.ppf(0.975)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": float(se), "z": float(z),
            "p": float(p), "ci_low": diff - q * se, "ci_high": diff + q * se}


def pairwise_comparisons(y: Any, probs: Mapping[str, Any], groups: Any = None, n_boot: int = 2000,
                         seed: int = 0) -> "Any":
    """For every pair of models: AUC difference, grouped-bootstrap 95% CI and DeLong p (a DataFrame)."""
    import itertools

    import pandas as pd

    rows = []
    for a, b in itertools.combinations(list(probs), 2):
        bs = bootstrap_auc_difference(y, probs[a], probs[b], groups=groups, n_boot=n_boot, seed=seed)
        dl = delong_test(y, probs[a], probs[b])
        rows.append({
            "a": a, "b": b, "auc_a": dl["auc_a"], "auc_b": dl["auc_b"], "diff": dl["diff"],
            "boot_ci_low": bs["ci_low"], "boot_ci_high": bs["ci_high"], "boot_n_valid": bs["n_valid"],
            "delong_z": dl["z"], "delong_p": dl["p"],
            "text": f"{dl['diff']:+.3f} [{bs['ci_low']:+.3f}, {bs['ci_high']:+.3f}], DeLong p = {dl['p']:.3g}",
        })
    return pd.DataFrame(rows)


def per_group_metrics(df: Any, by: Iterable[str], y_col: str = "y", prob_col: str = "prob",
                      threshold: float = 0.5):
    """``binary_metrics`` per group of a predictions DataFrame (e.g. ``by=["seed", "fold"]``)."""
    import pandas as pd

    rows = []
    for key, g in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row.update(binary_metrics(g[y_col].to_numpy(), g[prob_col].to_numpy(), threshold=threshold))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------
# Slide-bootstrap confidence intervals and operating thresholds
# --------------------------------------------------------------------------------------------------------

def _group_members(groups: Any, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    groups = np.asarray(groups)
    if groups.size != n:
        raise ValueError(f"groups has {groups.size} entries but there are {n} images; give one per image.")
    _, inv = np.unique(groups.astype(str), return_inverse=True)
    order = np.argsort(inv, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inv[order])) + 1)


def bootstrap_ci(y: Any, prob: Any, metric: Any = None, groups: Any = None, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Percentile bootstrap ``1 - alpha`` CIs of any metric, resampling whole groups (slides) with replacement.

    ``metric``: ``None`` (every metric of :func:`binary_metrics` at ``threshold``), a metric name of
    :data:`METRICS`, or a callable ``f(y, prob) -> float`` (or ``-> dict of floats``). Returns
    ``{name: {"value", "ci_low", "ci_high", "n_valid"}}``; resamples where a metric is undefined (NaN, e.g.
    AUC with one class) are left out of its interval and ``n_valid`` says how many remained.
    """
    y, prob = _as_arrays(y, prob)

    def compute(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        if metric is None or isinstance(metric, str):
            full = binary_metrics(yy, pp, threshold=threshold)
            keys = METRICS if metric is None else (metric,)
            return {k: float(full[k]) for k in keys}
        v = metric(yy, pp)
        return {k: float(x) for k, x in v.items()} if isinstance(v, Mapping) else {"value": float(v)}

    point = compute(y, prob)
    members = _group_members(groups, y.size)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    if members:
        for _ in range(int(n_boot)):
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])
            for k, v in compute(y[idx], prob[idx]).items():
                if math.isfinite(v):
                    draws[k].append(v)
    out: dict[str, dict[str, float]] = {}
    for k, v in point.items():
        d = np.asarray(draws[k])
        lo, hi = (np.quantile(d, [alpha / 2, 1 - alpha / 2]) if d.size else (float("nan"), float("nan")))
        out[k] = {"value": v, "ci_low": float(lo), "ci_high": float(hi), "n_valid": int(d.size)}
    return out


def format_ci(entry: Mapping[str, float], digits: int = 3) -> str:
    """``0.912 [0.850, 0.960]`` from a :func:`bootstrap_ci` entry."""
    v, lo, hi = entry["value"], entry["ci_low"], entry["ci_high"]
    if not math.isfinite(v):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


THRESHOLD_RULES = ("youden", "sensitivity:<s>", "fixed:<t>")


def choose_threshold(y: Any, prob: Any, rule: str = "youden") -> float:
    """Operating threshold on ``prob`` picked from labelled (validation / out-of-fold) predictions.

    ``rule``: ``"youden"`` (maximise sensitivity + specificity - 1), ``"sensitivity:0.9"`` (the highest
    threshold whose sensitivity is at least 0.9), or ``"fixed:0.5"``. Predictions are ``prob >= threshold``.
    """
    rule = str(rule).strip().lower()
    if rule.startswith("fixed:"):
        return float(rule.split(":", 1)[1])
    y, prob = _as_arrays(y, prob)
    if len(np.unique(y)) < 2:
        raise ValueError(f"threshold rule {rule!r} needs both positive and negative images; got only class "
                         f"{int(y[0]) if y.size else 'none'}. Label more images or use rule='fixed:0.5'.")
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, prob, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is +inf (nothing positive)
    if rule == "youden":
        j = tpr - fpr
        best = np.flatnonzero(j == j.max())
        # among ties take the middle of the flat stretch, a threshold between two observed scores
        k = int(best[len(best) // 2])
        return float(thr[k])
    if rule.startswith("sensitivity:"):
        target = float(rule.split(":", 1)[1])
        if not 0 < target <= 1:
            raise ValueError(f"threshold rule {rule!r}: the target sensitivity must be in (0, 1].")
        ok = np.flatnonzero(tpr >= target - 1e-12)
        return float(thr[ok[0]])
    raise ValueError(f"unknown threshold rule {rule!r}; use one of {THRESHOLD_RULES}.")


def threshold_from_oof(predictions: Any, rule: str = "youden", y_col: str = "y", prob_col: str = "prob") -> float:
    """:func:`choose_threshold` on out-of-fold predictions (rows repeated over seeds are averaged per ``path``)."""
    df = predictions
    if "path" in df.columns and df["path"].duplicated().any():
        df = df.groupby("path", sort=False).agg(**{y_col: (y_col, "first"), prob_col: (prob_col, "mean")})
    return choose_threshold(df[y_col].to_numpy(), df[prob_col].to_numpy(), rule)
