"""Biopsy-level read-outs from glomerulus-level predictions: share of positive glomeruli and a biopsy call.

A pathologist reports per biopsy, not per glomerulus: the Oxford M score is M1 when more than half of the
glomeruli show mesangial hypercellularity; the share of globally sclerotic glomeruli (%GS) is read in bands.
The predicted share is estimated two ways, the mean probability and the share of hard calls (``prob >=
threshold``); the mean probability is usually the better estimate: hard calls turn every uncertain glomerulus
into 0 or 1, and with a threshold that does not suit the data they shift every biopsy the same way.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core.io import write_csv_atomic, write_json_atomic
from glomlib.evaluate.plots import save_figure

ESTIMATES = {"prob": "mean probability", "hard": "share of hard calls"}


# ----------------------------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class BiopsyRule:
    """Cuts on the share of positive glomeruli: band = number of cuts the share is strictly above."""

    name: str
    cuts: tuple[float, ...]
    labels: tuple[str, ...]

    def call(self, share: Any) -> np.ndarray:
        s = np.asarray(share, dtype=float)
        idx = (s[..., None] > np.asarray(self.cuts)[None, :]).sum(axis=-1)
        return np.asarray(self.labels, dtype=object)[idx]


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def rule_for_label(positive_label: str, rule: str | BiopsyRule = "auto") -> BiopsyRule:
    """``rule``, or for ``"auto"``: %GS bands when the positive label is GS, else the Oxford M rule."""
    if isinstance(rule, str) and rule.strip().lower() == "auto":
        return parse_rule("gs_bands" if str(positive_label).strip().upper() == "GS" else "oxford_m")
    return parse_rule(rule)


def parse_rule(rule: str | BiopsyRule) -> BiopsyRule:
    """``"oxford_m"`` (> 0.5 ⇒ M1), ``"gs_bands"`` (≤ 10 %, 10–20 %, > 20 %) or ``"cuts:a,b,..."`` (shares in (0, 1))."""
    if isinstance(rule, BiopsyRule):
        return rule
    r = str(rule).strip().lower()
    if r in ("oxford_m", "oxford-m", "m"):
        return BiopsyRule("oxford_m", (0.5,), ("M0", "M1"))
    if r in ("gs_bands", "gs-bands", "gs"):
        cuts = (0.1, 0.2)
    elif r.startswith("cuts:"):
        try:
            cuts = tuple(float(c) for c in r[5:].split(",") if c.strip())
        except ValueError as e:
            raise ValueError(f"biopsy rule {rule!r}: cuts must be numbers, e.g. 'cuts:0.1,0.2'.") from e
        if not cuts or any(not 0 < c < 1 for c in cuts) or list(cuts) != sorted(set(cuts)):
            raise ValueError(f"biopsy rule {rule!r}: cuts must be increasing shares strictly between 0 and 1.")
    else:
        raise ValueError(f"unknown biopsy rule {rule!r}; use 'oxford_m', 'gs_bands' or 'cuts:0.1,0.2'.")
    edges = (0.0,) + cuts + (1.0,)
    labels = (
        [f"≤{_pct(cuts[0])}"]
        + [f"{_pct(a)}–{_pct(b)}" for a, b in zip(edges[1:-2], edges[2:-1])]
        + [f">{_pct(cuts[-1])}"]
    )
    return BiopsyRule(r if r.startswith("cuts:") else "gs_bands", cuts, tuple(labels))


# ------------------------------------------------------------------------------------------- the table
def largest_fraction(predictions: pd.DataFrame) -> pd.DataFrame:
    """The rows of the largest ``label_fraction`` (a fine-tune with several label fractions), else all rows."""
    if "label_fraction" in predictions.columns and predictions["label_fraction"].nunique() > 1:
        frac = predictions["label_fraction"].astype(float)
        return predictions[frac == frac.max()]
    return predictions


def per_image(predictions: pd.DataFrame, y_col: str = "y", prob_col: str = "prob") -> pd.DataFrame:
    """One row per image: predictions repeated over seeds (several rows per ``path``) are averaged. Models
    trained on different label fractions are never averaged together: select one first (:func:`largest_fraction`)."""
    missing = [c for c in (y_col, prob_col) if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions lack column(s) {missing}; they need {y_col!r} (0/1 truth) and "
            f"{prob_col!r} (probability of the positive label). Columns: {list(predictions.columns)}."
        )
    if "label_fraction" in predictions.columns and predictions["label_fraction"].nunique() > 1:
        raise ValueError(
            f"predictions of {predictions['label_fraction'].nunique()} label fractions "
            f"({sorted(predictions['label_fraction'].unique())}); select one, e.g. with largest_fraction()."
        )
    if "path" not in predictions.columns or not predictions["path"].duplicated().any():
        return predictions.reset_index(drop=True)
    keep = {c: "first" for c in predictions.columns if c not in ("path", prob_col)}
    keep[prob_col] = "mean"
    return predictions.groupby("path", sort=False).agg(keep).reset_index()


def biopsy_table(
    predictions: pd.DataFrame, threshold: float = 0.5, by: str = "slide", y_col: str = "y", prob_col: str = "prob"
) -> pd.DataFrame:
    """One row per biopsy (``by``: ``slide`` or ``patient``): ``n``, ``n_pos``, ``true_share``,
    ``pred_share_prob`` (mean probability), ``pred_share_hard`` (share with ``prob >= threshold``),
    ``diff_prob`` and ``diff_hard`` (predicted - true), and ``center`` when known."""
    df = per_image(predictions, y_col, prob_col)
    if by not in df.columns:
        raise ValueError(f"predictions have no {by!r} column to group biopsies by; columns: {list(df.columns)}.")
    if df[by].astype(str).eq("").any():
        bad = df.index[df[by].astype(str).eq("")][:5].tolist()
        raise ValueError(
            f"{int(df[by].astype(str).eq('').sum())} prediction row(s) have an empty {by!r} "
            f"(e.g. rows {bad}); every glomerulus needs its biopsy."
        )
    d = pd.DataFrame({by: df[by].astype(str), "y": df[y_col].astype(float), "prob": df[prob_col].astype(float)})
    d["hard"] = (d["prob"] >= float(threshold)).astype(float)
    g = d.groupby(by, sort=True)
    t = pd.DataFrame(
        {
            "n": g.size(),
            "n_pos": g["y"].sum().astype(int),
            "true_share": g["y"].mean(),
            "pred_share_prob": g["prob"].mean(),
            "pred_share_hard": g["hard"].mean(),
        }
    )
    t["diff_prob"] = t["pred_share_prob"] - t["true_share"]
    t["diff_hard"] = t["pred_share_hard"] - t["true_share"]
    if "center" in df.columns:
        t.insert(0, "center", df.assign(_b=d[by]).groupby("_b", sort=True)["center"].first().astype(str))
    t.attrs["threshold"] = float(threshold)
    return t


def icc(true: Any, pred: Any) -> dict[str, float]:
    """ICC(A,1) — two-way random effects, absolute agreement, single measurement — with its 95 % CI (pingouin)."""
    import pingouin as pg

    t = np.asarray(true, dtype=float)
    p = np.asarray(pred, dtype=float)
    nan = {"icc": float("nan"), "icc_ci_low": float("nan"), "icc_ci_high": float("nan")}
    if t.size < 3 or np.ptp(np.r_[t, p]) == 0:
        return nan  # fewer than 3 biopsies, or every share identical: the ICC is undefined
    raters = ["true"] * t.size + ["model"] * t.size
    long = pd.DataFrame({"biopsy": np.r_[np.arange(t.size), np.arange(t.size)], "rater": raters, "share": np.r_[t, p]})
    with warnings.catch_warnings():  # zero residual variance (perfect agreement) divides by zero inside pingouin
        warnings.simplefilter("ignore", RuntimeWarning)
        res = pg.intraclass_corr(data=long, targets="biopsy", raters="rater", ratings="share")
    res = res.set_index("Type")
    row = res.loc["ICC(A,1)" if "ICC(A,1)" in res.index else "ICC2"]  # pingouin >= 0.7 / older names
    ci = np.asarray(row["CI95"] if "CI95" in row.index else row["CI95%"], dtype=float)
    return {"icc": float(row["ICC"]), "icc_ci_low": float(ci[0]), "icc_ci_high": float(ci[1])}


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per estimate (mean probability, hard calls): MAE, max |error|, Bland–Altman bias and 95 % limits, ICC(A,1)."""
    rows = []
    for key, label in ESTIMATES.items():
        diff = table[f"diff_{key}"].to_numpy(dtype=float)
        sd = float(diff.std(ddof=1)) if diff.size > 1 else float("nan")
        bias = float(diff.mean()) if diff.size else float("nan")
        row = {"estimate": label, "n_biopsies": int(diff.size), "mae": float(np.abs(diff).mean())}
        row.update(
            max_abs_error=float(np.abs(diff).max()), bias=bias, loa_low=bias - 1.96 * sd, loa_high=bias + 1.96 * sd
        )
        rows.append({**row, **icc(table["true_share"], table[f"pred_share_{key}"])})
    return pd.DataFrame(rows).set_index("estimate")


def biopsy_calls(table: pd.DataFrame, rule: str | BiopsyRule = "oxford_m") -> pd.DataFrame:
    """``true_call`` and ``call_prob`` / ``call_hard`` per biopsy under ``rule`` (see :func:`parse_rule`)."""
    r = parse_rule(rule)
    out = pd.DataFrame(index=table.index)
    out["true_call"] = r.call(table["true_share"])
    for key in ESTIMATES:
        out[f"call_{key}"] = r.call(table[f"pred_share_{key}"])
    out.attrs["rule"] = r
    return out


def call_metrics(calls: pd.DataFrame, rule: str | BiopsyRule | None = None) -> pd.DataFrame:
    """Biopsy-level agreement of each estimate's call with the true call: accuracy and Cohen's kappa
    (linearly weighted when the rule has more than two ordered bands)."""
    from sklearn.metrics import cohen_kappa_score

    r = parse_rule(rule) if rule is not None else calls.attrs.get("rule")
    labels = list(r.labels) if r is not None else sorted(set(calls["true_call"]))
    code = {lab: i for i, lab in enumerate(labels)}
    t = calls["true_call"].map(code).to_numpy()
    rows = []
    for key, label in ESTIMATES.items():
        p = calls[f"call_{key}"].map(code).to_numpy()
        if len(set(t) | set(p)) < 2:
            kappa = float("nan")  # one category everywhere: kappa is undefined
        else:
            kappa = float(
                cohen_kappa_score(t, p, labels=list(range(len(labels))), weights="linear" if len(labels) > 2 else None)
            )
        row = {"estimate": label, "n_biopsies": int(t.size), "accuracy": float(np.mean(t == p)), "kappa": kappa}
        row["kappa_weights"] = "linear" if len(labels) > 2 else "none"
        rows.append(
            {**row, "n_true_positive_calls": int(np.sum(t > 0)), "n_predicted_positive_calls": int(np.sum(p > 0))}
        )
    return pd.DataFrame(rows).set_index("estimate")


def call_confusion(calls: pd.DataFrame, estimate: str = "prob") -> pd.DataFrame:
    """Biopsies per (true call, predicted call) for one estimate (``prob`` or ``hard``)."""
    r = calls.attrs.get("rule")
    labels = list(r.labels) if r is not None else sorted(set(calls["true_call"]) | set(calls[f"call_{estimate}"]))
    ct = pd.crosstab(
        pd.Categorical(calls["true_call"], labels), pd.Categorical(calls[f"call_{estimate}"], labels), dropna=False
    )
    ct.index.name, ct.columns.name = "true call", f"call from {ESTIMATES[estimate]}"
    return ct


@dataclasses.dataclass
class BiopsyReadout:
    table: pd.DataFrame  # one row per biopsy
    agreement: pd.DataFrame  # MAE, Bland–Altman, ICC per estimate
    calls: pd.DataFrame  # true and predicted calls per biopsy
    call_metrics: pd.DataFrame  # accuracy, kappa per estimate
    rule: BiopsyRule
    threshold: float
    by: str

    def to_dict(self) -> dict[str, Any]:
        def clean(d):
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

        r = self.rule
        doc = {
            "by": self.by,
            "threshold": self.threshold,
            "rule": r.name,
            "cuts": list(r.cuts),
            "labels": list(r.labels),
        }
        for name in ("agreement", "call_metrics"):
            doc[name] = {k: clean(v) for k, v in getattr(self, name).to_dict(orient="index").items()}
        return doc


def readouts(
    predictions: pd.DataFrame,
    threshold: float = 0.5,
    rule: str | BiopsyRule = "oxford_m",
    by: str = "slide",
    y_col: str = "y",
    prob_col: str = "prob",
) -> BiopsyReadout:
    """Every biopsy-level read-out of ``predictions`` (see the module docstring)."""
    table = biopsy_table(predictions, threshold=threshold, by=by, y_col=y_col, prob_col=prob_col)
    r = parse_rule(rule)
    calls = biopsy_calls(table, r)
    return BiopsyReadout(table, agreement(table), calls, call_metrics(calls, r), r, float(threshold), by)


def runs_table(
    runs: dict[str, pd.DataFrame], threshold: float = 0.5, rule: str | BiopsyRule = "auto", by: str = "slide"
) -> pd.DataFrame:
    """Biopsy-level agreement of several runs (e.g. one per init) side by side: per run and estimate, MAE, bias,
    ICC(A,1) and the biopsy-call accuracy and kappa. ``runs``: name -> out-of-fold predictions (the largest
    label fraction is used when several are present)."""
    rows = []
    for name, pred in runs.items():
        pred = largest_fraction(pred)
        labels = pred.loc[pred["y"] == 1, "label"] if "label" in pred.columns else []
        r = rule_for_label(str(labels.iloc[0]) if len(labels) else "", rule)
        ro = readouts(pred, threshold=threshold, rule=r, by=by)
        for est in ro.agreement.index:
            a, c = ro.agreement.loc[est], ro.call_metrics.loc[est]
            row = {"run": name, "estimate": est, "biopsies": int(a["n_biopsies"])}
            row.update({k: a[k] for k in ("mae", "bias", "icc")})
            rows.append({**row, f"call accuracy ({r.name})": c["accuracy"], "kappa": c["kappa"]})
    return pd.DataFrame(rows).set_index(["run", "estimate"])


def bland_altman_figure(table: pd.DataFrame, title: str = "", positive_label: str = "positive"):
    """Bland–Altman plots (difference vs mean of predicted and true share) for both estimates, side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    ax0 = axes[0]
    ax0.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for key, marker in (("prob", "o"), ("hard", "x")):
        ax0.scatter(table["true_share"], table[f"pred_share_{key}"], marker=marker, s=28, label=ESTIMATES[key])
    ax0.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel=f"true share of {positive_label}",
        ylabel="predicted share",
        title="predicted vs true share per biopsy",
    )
    ax0.legend(fontsize=8, frameon=False)
    for ax, key in zip(axes[1:], ESTIMATES):
        mean = (table["true_share"] + table[f"pred_share_{key}"]) / 2
        diff = table[f"diff_{key}"]
        bias = float(diff.mean())
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        sizes = 12 + 60 * table["n"] / max(1, table["n"].max())
        ax.scatter(mean, diff, s=sizes, alpha=0.75)
        ax.axhline(bias, color="k", lw=1, label=f"bias {bias:+.3f}")
        for v in (bias - 1.96 * sd, bias + 1.96 * sd):
            ax.axhline(v, color="k", lw=0.8, ls=":")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(
            xlabel="mean of predicted and true share",
            ylabel="predicted − true",
            title=f"Bland–Altman: {ESTIMATES[key]}\n(dotted: 95% limits of agreement)",
        )
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    for ax in axes[1:]:
        ax.set_ylim(min(-0.3, *(a.get_ylim()[0] for a in axes[1:])), max(0.3, *(a.get_ylim()[1] for a in axes[1:])))
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def show(
    predictions: pd.DataFrame,
    threshold: float = 0.5,
    rule: str | BiopsyRule = "auto",
    by: str = "slide",
    out: Any = None,
    positive_label: str | None = None,
    name: str = "biopsy",
) -> BiopsyReadout:
    """Notebook cell helper (``rule="auto"``: see :func:`rule_for_label`): compute :func:`readouts`, display the tables and the Bland–Altman figure, and
    (with ``out``) save ``<out>/<name>_table.csv``, ``<name>_readouts.json`` and ``figures/<name>_bland_altman.png``."""
    from IPython.display import Markdown, display

    if "label_fraction" in predictions.columns and predictions["label_fraction"].nunique() > 1:
        predictions = largest_fraction(predictions)  # a run with several label fractions
        largest = float(predictions["label_fraction"].iloc[0])
        display(Markdown(f"Predictions of the runs with {largest:.0%} of the training labels."))
    if positive_label is None:  # the label of the rows with y == 1
        labels = predictions.loc[predictions["y"] == 1, "label"] if "label" in predictions.columns else []
        positive_label = str(labels.iloc[0]) if len(labels) else "positive"
    ro = readouts(predictions, threshold=threshold, rule=rule_for_label(positive_label, rule), by=by)
    display(
        Markdown(
            f"**Per {by}** (threshold for hard calls: {ro.threshold:.3f}; rule `{ro.rule.name}`: "
            f"{', '.join(ro.rule.labels)})"
        )
    )
    display(ro.table.round(3))
    display(Markdown("**Agreement of the predicted with the true share** (MAE, Bland–Altman, ICC(A,1))"))
    display(ro.agreement.round(3))
    display(Markdown("**Biopsy-level call**"))
    display(ro.call_metrics.round(3))
    display(call_confusion(ro.calls, "prob"))
    fig = bland_altman_figure(ro.table, positive_label=positive_label)
    if out is not None:
        out = Path(out)
        write_csv_atomic(ro.table.reset_index(), out / f"{name}_table.csv")
        write_json_atomic(out / f"{name}_readouts.json", ro.to_dict())
        save_figure(fig, out, f"{name}_bland_altman")
    display(fig)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return ro
