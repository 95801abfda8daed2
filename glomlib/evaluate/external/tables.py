"""The figures of an evaluation: metrics with slide-bootstrap CIs, per-group tables, per-centre summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from glomlib.evaluate import biopsy as B
from glomlib.evaluate import metrics as M
from glomlib.evaluate import uncertainty as U


def rule_for(meta: Mapping[str, Any], rule: str) -> B.BiopsyRule:
    """The biopsy rule for a model (``auto``: %GS bands for GS, else Oxford M)."""
    return B.rule_for_label(str(meta.get("positive_label", "")), rule)


# ------------------------------------------------------------------------------------------------ metrics
def metrics_with_ci(y: Any, prob: Any, groups: Any, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric of :data:`glomlib.evaluate.metrics.METRICS` at ``threshold`` with slide-bootstrap 95 % CIs."""
    ci = U.bootstrap_ci(y, prob, groups=groups, n_boot=n_boot, seed=seed, threshold=threshold)
    full = M.binary_metrics(y, prob, threshold=threshold)
    return {
        "n": full["n"],
        "n_pos": full["n_pos"],
        "n_groups": int(len(set(map(str, groups)))),
        **{m: ci[m] for m in M.METRICS},
    }


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def ci_table(blocks: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Rows = blocks (e.g. overall, per centre), columns = metrics as ``value [low, high]``."""
    rows = []
    for name, b in blocks.items():
        row = {"": name, "n": b["n"], "positives": b["n_pos"]}
        for m in M.METRICS:
            row[M.METRIC_LABELS[m]] = M.format_ci(b[m])
        rows.append(row)
    return pd.DataFrame(rows).set_index("")


def per_group_table(pred: pd.DataFrame, by: str, threshold: float) -> pd.DataFrame:
    """Per slide / centre: counts, mean probability and every metric at ``threshold`` (NaN where undefined)."""
    rows = []
    for key, g in pred.groupby(by, sort=True):
        m = M.binary_metrics(g["y"], g["prob"], threshold=threshold)
        rows.append(
            {
                by: key,
                "n": m.pop("n"),
                "n_pos": m.pop("n_pos"),
                "mean_prob": float(g["prob"].mean()),
                "share_pred_pos": float((g["prob"] >= threshold).mean()),
                **m,
            }
        )
    return pd.DataFrame(rows)


def reliability_figure(y: Any, probs: Mapping[str, Any], n_bins: int = 10, title: str = "Reliability diagram"):
    """Observed share of positives against mean predicted probability per bin, one line per probability set."""
    import matplotlib.pyplot as plt

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for name, p in probs.items():
        t = M.reliability_table(y, p, n_bins=n_bins)
        ok = t["count"] > 0
        ece = M.expected_calibration_error(y, p, n_bins=n_bins)
        ax.plot(t["mean_prob"][ok], t["frac_pos"][ok], marker="o", label=f"{name} (ECE {ece:.3f})")
        axh.hist(np.asarray(p, dtype=float), bins=n_bins, range=(0, 1), histtype="step", label=name)
    ax.set(ylabel="observed share of positives", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    axh.set(xlabel="predicted probability", ylabel="images")
    fig.tight_layout()
    return fig


def evaluate_predictions(
    pred: pd.DataFrame,
    meta: Mapping[str, Any],
    *,
    by: str = "slide",
    biopsy_rule: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """The metrics.json document for a predictions table (``y``, ``prob``, ``prob_raw``, ``slide``, ``center``)."""
    thr = float(meta.get("threshold", 0.5))
    groups = pred["slide"].astype(str).to_numpy()
    doc: dict[str, Any] = {k: meta.get(k) for k in ("calibration", "positive_label", "negative_label")}
    doc = {"threshold": thr, "threshold_rule": meta.get("threshold_rule", "fixed:0.5 (default)"), **doc}
    doc["bootstrap"] = {"n_boot": int(n_boot), "unit": "slide", "seed": int(seed)}
    doc["overall"] = metrics_with_ci(pred["y"], pred["prob"], groups, thr, n_boot, seed)
    doc["per_center_ci"], doc["before_calibration"] = {}, None
    if pred["center"].astype(str).ne("").any():
        for c, g in pred.groupby("center", sort=True):
            doc["per_center_ci"][str(c)] = metrics_with_ci(g["y"], g["prob"], g["slide"].astype(str), thr, n_boot, seed)
    src = meta.get("calibrated_from")
    if meta.get("calibration") and isinstance(src, Mapping):
        thr0 = float(src.get("threshold", 0.5))
        doc["before_calibration"] = {**metrics_with_ci(pred["y"], pred["prob_raw"], groups, thr0, n_boot, seed)}
        doc["before_calibration"]["threshold"] = thr0
    rule = rule_for(meta, biopsy_rule)
    ro = B.readouts(pred, threshold=thr, rule=rule, by=by)
    doc["biopsy"] = ro.to_dict()
    if doc["before_calibration"] is not None:
        thr0 = doc["before_calibration"]["threshold"]
        doc["biopsy_before_calibration"] = B.readouts(pred.assign(prob=pred["prob_raw"]), thr0, rule, by).to_dict()
    return doc


def centre_table(runs: Mapping[str, pd.DataFrame], threshold: float = 0.5) -> pd.DataFrame:
    """Per run and held-out centre (out-of-fold predictions, e.g. of ``cv=centre`` fine-tunes): glomeruli, AUC,
    balanced accuracy at ``threshold``, and the biopsy-level error of the share of positives (MAE over the centre's
    slides, from the mean probability and from hard calls). A run with several label fractions: the largest."""
    rows = []
    for name, pred in runs.items():
        img = B.per_image(B.largest_fraction(pred))
        for c, g in img.groupby("center", sort=True):
            m = M.binary_metrics(g["y"], g["prob"], threshold=threshold)
            t = B.biopsy_table(g, threshold=threshold)
            rows.append(
                {
                    "run": name,
                    "centre": c,
                    "n": m["n"],
                    "n_pos": m["n_pos"],
                    "auc": m["auc"],
                    "balanced_accuracy": m["balanced_accuracy"],
                    "biopsy_mae_prob": float(t["diff_prob"].abs().mean()),
                    "biopsy_mae_hard": float(t["diff_hard"].abs().mean()),
                }
            )
    return pd.DataFrame(rows)


def centre_summary(runs: Mapping[str, pd.DataFrame], threshold: float = 0.5) -> pd.DataFrame:
    """:func:`centre_table` per seed, then mean and sample std over seeds per run and held-out centre (columns
    ``<metric>`` and ``<metric>_sd``, ``seeds``). A run without a ``seed`` column counts as one seed."""
    rows = []
    for name, pred in runs.items():
        seeds = sorted(pred["seed"].unique()) if "seed" in pred.columns else [None]
        for s in seeds:
            sub = pred if s is None else pred[pred["seed"] == s]
            t = centre_table({name: sub}, threshold=threshold)
            t["seed"] = s
            rows.append(t)
    per_seed = pd.concat(rows, ignore_index=True)
    metrics = ["auc", "balanced_accuracy", "biopsy_mae_prob", "biopsy_mae_hard"]
    g = per_seed.groupby(["run", "centre"], sort=False)
    out = g[["n", "n_pos"]].first()
    for m in metrics:
        out[m] = g[m].mean()
        out[f"{m}_sd"] = g[m].std(ddof=1)
    out["seeds"] = g["seed"].nunique(dropna=False)
    return out.reset_index()
