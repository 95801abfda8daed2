"""Per-fold classification metrics of a binary lesion task and operating thresholds, in the study's format.

``y`` is 1 for the positive label and 0 for the negative one; ``prob`` is the predicted probability of the
positive label. Standard deviations over folds are sample std (``ddof=1``). Confidence intervals and paired tests
live in :mod:`glomlib.evaluate.uncertainty`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


def confusion_counts(y: Any, prob: Any, threshold: float = 0.5) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` at ``threshold`` (a probability >= threshold is a positive call)."""
    from sklearn.metrics import confusion_matrix

    y, prob = _as_arrays(y, prob)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, (prob >= threshold).astype(int), labels=[0, 1]).ravel())
    return {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def binary_metrics(y: Any, prob: Any, threshold: float = 0.5, n_bins: int = 10) -> dict[str, float]:
    """All per-fold metrics of :data:`METRICS` for labels ``y`` and positive-class probabilities ``prob``.

    Predictions are ``prob >= threshold``. Metrics undefined for the data (e.g. AUC with one class,
    sensitivity without positives) are NaN rather than an error.
    """
    from sklearn.metrics import f1_score

    y, prob = _as_arrays(y, prob)
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_counts(y, prob, threshold).values()
    sens = tp / (tp + fn) if (tp + fn) else float("nan")
    spec = tn / (tn + fp) if (tn + fp) else float("nan")
    bal = (sens + spec) / 2 if not (math.isnan(sens) or math.isnan(spec)) else (sens if math.isnan(spec) else spec)
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


def per_group_metrics(df: Any, by: Iterable[str], y_col: str = "y", prob_col: str = "prob", threshold: float = 0.5):
    """``binary_metrics`` per group of a predictions DataFrame (e.g. ``by=["seed", "fold"]``)."""
    import pandas as pd

    rows = []
    for key, g in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row.update(binary_metrics(g[y_col].to_numpy(), g[prob_col].to_numpy(), threshold=threshold))
        rows.append(row)
    return pd.DataFrame(rows)


def format_ci(entry: Mapping[str, float], digits: int = 3) -> str:
    """``0.912 [0.850, 0.960]`` from a :func:`bootstrap_ci` entry."""
    v, lo, hi = entry["value"], entry["ci_low"], entry["ci_high"]
    if not math.isfinite(v):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


THRESHOLD_RULES = ("youden", "sensitivity:<s>", "fixed:<t>")
#: default threshold rule on a handful of local labels: measured (benchmarks/model_variance.py, 10 seeds, 20 local
#: glomeruli; README "Model bundles") Youden's threshold on so few labels gave the shipped bundle a per-biopsy %GS error
#: of 11.2 points at SESCAM where fixed:0.5 on the Platt-calibrated probabilities gave 8.2 (VUHSK: 2.8 vs 2.0).
LOCAL_THRESHOLD_RULE = "fixed:0.5"


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
        raise ValueError(
            f"threshold rule {rule!r} needs both positive and negative images; got only class "
            f"{int(y[0]) if y.size else 'none'}. Label more images or use rule='fixed:0.5'."
        )
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
