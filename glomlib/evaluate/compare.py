"""Compare fine-tuning initialisations honestly (notebook 04); reads notebook 03's runs, trains nothing.

The study's table (mean ± sample std over slide-grouped test folds and seeds), pairwise AUC differences on the
same out-of-fold images (slide-bootstrap 95% CI, paired DeLong p), label efficiency, and figures.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core.config import ConfigError, NonNegativeInt, PositiveInt, StepConfig, budget_value
from glomlib.core.coverage import fold_coverage
from glomlib.core.io import ensure_new_dir, new_run_dir, write_json_atomic, write_provenance
from glomlib.core.runs import finished_runs
from glomlib.evaluate.metrics import METRIC_LABELS, METRICS, auc, expected_calibration_error, reliability_table
from glomlib.evaluate.runs import INITS, fraction_view, label_fractions, load_run
from glomlib.evaluate.uncertainty import pairwise_comparisons, roc_band

#: The study's numbers (KSN 2025 abstract), M1 vs M0, for reference next to ours.
STUDY_REFERENCE = {
    "glom": {"auc": "0.890 ± 0.007", "accuracy": "0.810 ± 0.004", "f1_weighted": "0.811 ± 0.003"},
    "imagenet": {"auc": "0.796 ± 0.013"},
    "scratch": {"auc": "0.637 ± 0.027"},
}
#: Label budgets of the protocol (issue 21): labels per class, then shares of the training labels.
PROBE_BUDGETS = ("1/class", "2/class", "4/class", "8/class", "16/class", "32/class", 0.05, 0.1, 0.25, 0.5, 1.0)
# publish.present.INIT_COLORS (Okabe-Ito), repeated here: evaluate does not import publish
COLORS = {"glom": "#009E73", "imagenet": "#E69F00", "scratch": "#CC79A7"}


@dataclasses.dataclass(frozen=True)
class CompareConfig(StepConfig):
    """Parameters of notebook 04 (``notebooks/04_baseline_comparison.ipynb``)."""

    runs: str = "latest"  # folder with <init>/ fine-tune runs, comma-separated run folders, or "latest" (newest finished run of each init under runs/)
    out: str = "auto"  # output folder; "auto" = runs/<stamp>-comparison
    data: str = ""  # manifest the runs must have been trained on ("" = only check that the runs used the same data)
    inits: list[str] = dataclasses.field(default_factory=lambda: list(INITS))  # initialisations to compare
    n_boot: PositiveInt = 2000  # bootstrap resamples (slide-grouped) per pairwise difference
    label_efficiency: bool = True  # AUC vs label fraction, from the fractions the runs hold
    probe_seeds: NonNegativeInt = 50  # seeds of the frozen linear probe per label budget (0 = off)
    probe_budgets: list[float | str] = dataclasses.field(default_factory=lambda: [*PROBE_BUDGETS])  # N/class or shares

    def validate(self) -> None:
        bad = [i for i in self.inits if i not in INITS]
        if bad or not self.inits:
            raise ConfigError(f"inits={self.inits}: choose from {list(INITS)}.")
        try:
            [budget_value(b) for b in self.probe_budgets]
        except ValueError as e:
            raise ConfigError(f"probe_budgets: {e}.") from None


def prepare_out(cfg: CompareConfig) -> Path:
    out = new_run_dir("runs", "comparison") if cfg.out in ("auto", "", None) else ensure_new_dir(cfg.out)
    (out / "figures").mkdir(exist_ok=True)
    cfg.save(out / "config.json")
    return out


def _run_init(d: Path) -> str:
    m = json.loads((d / "metrics.json").read_text())
    return str(m.get("init") or json.loads((d / "config.json").read_text()).get("init"))


def collect_runs(
    runs: str | Path = "latest", inits=INITS, root: str | Path = "runs", data: str | Path = ""
) -> dict[str, dict[str, Any]]:
    """``{init: load_run(...)}`` for the finished fine-tune runs named by ``runs`` (see :class:`CompareConfig`).

    Raises FileNotFoundError naming what is missing and how to make it (notebook 03 / ``glomlib finetune``), and
    ValueError when the runs were trained on different data (provenance fingerprints) or not on ``data``."""
    spec = str(runs)
    found: dict[str, Path] = {}
    if spec in ("latest", "auto", ""):
        for d in finished_runs(root):  # newest last wins
            init = _run_init(d)
            if init in inits:
                found[init] = d
        where = f"under {Path(root).resolve()}"
    elif "," in spec or (Path(spec).is_dir() and (Path(spec) / "metrics.json").is_file()):
        for part in [x.strip() for x in spec.split(",") if x.strip()]:
            d = Path(part)
            if not (d / "metrics.json").is_file():
                raise FileNotFoundError(f"runs: {d} is not a finished fine-tune run (no metrics.json).")
            init = _run_init(d)
            if init in found:
                raise ValueError(f"runs: two runs of init {init!r} ({found[init]} and {d}); give one per init.")
            found[init] = d
        where = f"in {spec!r}"
    else:
        for init in inits:
            if (Path(spec) / init / "metrics.json").is_file():
                found[init] = Path(spec) / init
        where = f"in {Path(spec).resolve()} (expected <init>/metrics.json)"
    missing = [i for i in inits if i not in found]
    if missing:
        raise FileNotFoundError(
            f"no finished fine-tune run for init(s) {missing} {where}. Run notebook 03 (or "
            f"`glomlib finetune --init {missing[0]}`) for each, then pass runs=<folder>."
        )
    loaded = {i: load_run(found[i]) for i in inits}
    check_same_data(loaded, data)
    for r in loaded.values():  # never a metric over part of a fold (issue 19)
        fold_coverage(r["predictions"], r["folds"])
    return loaded


def check_same_data(runs: dict[str, dict[str, Any]], data: str | Path = "") -> None:
    """Paired comparisons need the same images: every run's data fingerprint (provenance.json) must agree, and
    with ``data`` every run's manifest (config.json) must be that file."""
    fps = {}
    for init, r in runs.items():
        prov = Path(r["dir"]) / "provenance.json"
        if prov.is_file():
            fps[init] = json.loads(prov.read_text()).get("data_fingerprint")
    if len({v for v in fps.values() if v}) > 1:
        raise ValueError(
            f"the runs were trained on different data (fingerprints {fps}); fine-tune every init on "
            "the same manifest before comparing them."
        )
    if str(data):
        want = Path(data).resolve()
        other = {
            i: r["config"].get("data") for i, r in runs.items() if Path(str(r["config"].get("data"))).resolve() != want
        }
        if other:
            raise ValueError(f"data={str(data)!r} but these runs were trained on other manifests: {other}.")


def main_fraction(runs: dict[str, dict[str, Any]]) -> float:
    """The largest label fraction every run holds (usually 1.0): the headline comparison's fraction."""
    common = set.intersection(*(set(label_fractions(r)) for r in runs.values()))
    if not common:
        raise ValueError("the runs share no label fraction; fine-tune every init with the same label_fractions.")
    return max(common)


def main_runs(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every run restricted to :func:`main_fraction` (table, pairwise tests, ROC, reliability, per-centre AUC)."""
    f = main_fraction(runs)
    return {i: fraction_view(r, f) for i, r in runs.items()}


def comparison_table(runs: dict[str, dict[str, Any]], metrics=None, reference: bool = False):
    """One row per init: mean ± std of each metric over test folds (and seeds), plus the number of folds."""
    metrics = metrics or METRICS
    rows = []
    for init, r in runs.items():
        summ = r["metrics"]["summary"]
        row = {"init": init}
        for m in metrics:
            if m in summ:
                row[METRIC_LABELS[m]] = summ[m].get("text") or f"{summ[m]['mean']:.3f} ± {summ[m]['std']:.3f}"
        pf = r["metrics"]["per_fold"]
        row["folds × seeds"] = len(pf)
        row["seeds"] = len({p.get("seed", 0) for p in pf})
        row["label fraction"] = r["metrics"].get("label_fraction", 1.0)
        rows.append(row)
        if reference and init in STUDY_REFERENCE:
            ref = {"init": f"{init} (study, M1 vs M0)"}
            ref.update({METRIC_LABELS[m]: v for m, v in STUDY_REFERENCE[init].items()})
            rows.append(ref)
    table = pd.DataFrame(rows).set_index("init")
    # blank (not NaN) where the study reported nothing; counts stay integers
    return table.astype(object).where(table.notna(), "")


def paired_oof(runs: dict[str, dict[str, Any]]):
    """Out-of-fold probabilities per image (mean over seeds) side by side: columns path, slide, y, <init>..."""
    merged = None
    for init, r in runs.items():
        p = r["predictions"]
        g = p.groupby("path", sort=True).agg(slide=("slide", "first"), y=("y", "first"), prob=("prob", "mean"))
        g = g.rename(columns={"prob": init})
        merged = g if merged is None else merged.join(g[[init]], how="inner")
    if merged is None:
        raise ValueError("no runs to compare")
    if len(merged) < max(len(r["predictions"]["path"].unique()) for r in runs.values()):
        warnings.warn("the runs predicted different images; only the images common to all are compared.", stacklevel=2)
    return merged.reset_index()


def pairwise_tests(runs: dict[str, dict[str, Any]], n_boot: int = 2000, seed: int = 0):
    """Pairwise AUC differences on the pooled out-of-fold predictions: slide-grouped bootstrap CI + DeLong p."""
    oof = paired_oof(runs)
    probs = {i: oof[i].to_numpy() for i in runs}
    return pairwise_comparisons(oof["y"].to_numpy(), probs, groups=oof["slide"].to_numpy(), n_boot=n_boot, seed=seed)


def per_center_auc(runs: dict[str, dict[str, Any]]):
    """AUC within each centre (pooled out-of-fold predictions of every seed; ``n``, ``n_pos`` count images): a model
    that learnt stain/centre rather than the lesion looks good overall but not within a centre. NaN where a centre
    has only one class."""
    rows = []
    for init, r in runs.items():
        p = r["predictions"]
        for c, g in p.groupby("center", sort=True):
            img = g.drop_duplicates("path")  # one row per image and seed: count images once
            row = {"init": init, "center": c or "(none)", "n": len(img), "n_pos": int(img["y"].sum())}
            rows.append({**row, "auc": auc(g["y"], g["prob"])})
    t = pd.DataFrame(rows)
    wide = t.pivot(index="center", columns="init", values="auc")[list(runs)]
    counts = t.drop_duplicates("center").set_index("center")[["n", "n_pos"]]
    return counts.join(wide)


def label_efficiency(runs: dict[str, dict[str, Any]]):
    """AUC vs label fraction per init, from the fractions each run holds: mean ± sample std over (seed, fold)."""
    rows = []
    for init, r in runs.items():
        for f in label_fractions(r):
            v = fraction_view(r, f)
            pf = pd.DataFrame(v["metrics"]["per_fold"])
            s = v["metrics"]["summary"]["auc"]
            row = {"init": init, "fraction": f, "auc_mean": s["mean"], "auc_std": s["std"], "auc_text": s["text"]}
            row.update(n_folds=len(pf), n_seeds=int(pf["seed"].nunique()) if "seed" in pf else 1)
            n_train = float(pf["n_train"].median()) if "n_train" in pf else np.nan
            rows.append({**row, "n_train_median": n_train, "run": str(r["dir"])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ figures
def _save(fig, out: Path | None, name: str):
    if out is not None:
        (Path(out) / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out) / "figures" / name, dpi=130, bbox_inches="tight")
    return fig


def pooled(run: dict[str, Any]) -> pd.DataFrame:
    """One row per image of a run's out-of-fold predictions: ``y``, ``prob`` (mean over seeds), ``slide`` and
    ``center`` (when known)."""
    p = run["predictions"]
    extra = {c: (c, "first") for c in ("slide", "center") if c in p.columns}
    return p.groupby("path", sort=True).agg(y=("y", "first"), prob=("prob", "mean"), **extra)


def plot_roc(
    runs: dict[str, dict[str, Any]], out: Path | None = None, name: str = "roc.png", threshold: float = 0.5, n_boot=1000
):
    """ROC (slide-bootstrap 95 % band, operating point at ``threshold`` as a dot) and precision-recall curves of
    the pooled out-of-fold predictions, one colour per init; the PR panel's dotted line is the prevalence."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    for init, r in runs.items():
        p, c = pooled(r), COLORS.get(init)
        band = roc_band(p["y"], p["prob"], groups=p["slide"], n_boot=n_boot)
        ax.fill_between(band["grid"], band["tpr_low"], band["tpr_high"], color=c, alpha=0.12, lw=0)
        ax.plot(band["fpr"], band["tpr"], color=c, lw=2, label=f"{init}: AUC {auc(p['y'], p['prob']):.3f}")
        call, pos = p["prob"] >= threshold, p["y"] == 1
        ax.plot(
            (call & ~pos).sum() / max((~pos).sum(), 1), (call & pos).sum() / max(pos.sum(), 1), "o", color=c, mec="k"
        )
        prec, rec, _ = precision_recall_curve(p["y"], p["prob"])
        ax2.plot(
            rec,
            prec,
            color=c,
            lw=2,
            label=f"{init}: average precision {average_precision_score(p['y'], p['prob']):.3f}",
        )
    ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8)
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"ROC: shaded 95 % CI (slide bootstrap), dot = threshold {threshold:g}", fontsize=10)
    prev = float(p["y"].mean())
    ax2.axhline(prev, ls=":", color="k", lw=0.8, label=f"prevalence {prev:.1%} (guessing)")
    ax2.set(xlabel="sensitivity (recall)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01))
    ax2.set_title("Precision-recall", fontsize=10)
    for a in (ax, ax2):
        a.legend(loc="lower right" if a is ax else "lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, out, name)


def plot_reliability(
    runs: dict[str, dict[str, Any]], out: Path | None = None, n_bins: int = 10, name: str = "reliability.png"
):
    """Reliability diagram per init: observed positive fraction vs mean predicted probability per bin."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
    for ax, (init, r) in zip(axes[0], runs.items()):
        p = pooled(r)
        t = reliability_table(p["y"], p["prob"], n_bins=n_bins)
        ok = t["count"] > 0
        centers = (t["bin_lo"] + t["bin_hi"]) / 2
        bar = {"width": 1 / n_bins, "alpha": 0.5, "color": COLORS.get(init), "edgecolor": "k", "label": "observed"}
        ax.bar(centers[ok], t["frac_pos"][ok], **bar)
        ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8, label="perfect calibration")
        for c, n, fp in zip(centers[ok], t["count"][ok], t["frac_pos"][ok]):
            ax.text(c, min(fp + 0.02, 0.93), f"{int(n)}", ha="center", fontsize=9)
        ece = expected_calibration_error(p["y"], p["prob"], n_bins=n_bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed positive fraction")
        ax.set_title(f"{init} (ECE {ece:.3f}, all test folds pooled)", fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return _save(fig, out, name)


def plot_label_efficiency(le, out: Path | None = None, name: str = "label_efficiency.png"):
    """AUC (mean ± std over folds) vs label fraction, one line per init."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for init, g in le.groupby("init", sort=False):
        g = g.sort_values("fraction")
        style = {"marker": "o", "capsize": 3, "color": COLORS.get(init), "label": init}
        low = np.minimum(g["auc_std"], g["auc_mean"])  # the bars stay within [0, 1]
        ax.errorbar(
            g["fraction"] * 100, g["auc_mean"], yerr=[low, np.minimum(g["auc_std"], 1 - g["auc_mean"])], **style
        )
    ax.set_xscale("log")
    ticks = sorted(le["fraction"].unique() * 100)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(top=min(1.02, ax.get_ylim()[1]))
    ax.set(xlabel="training labels used (% of the training folds)", ylabel="AUC (mean ± std over test folds)")
    ax.set_title("Label efficiency")
    ax.legend()
    return _save(fig, out, name)


def plot_fold_aucs(runs: dict[str, dict[str, Any]], out: Path | None = None, name: str = "fold_aucs.png"):
    """AUC of every test fold per init (a point per fold), so the spread behind mean ± std is visible."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (init, r) in enumerate(runs.items()):
        a = [row["auc"] for row in r["metrics"]["per_fold"]]
        ax.scatter(np.full(len(a), i) + np.linspace(-0.1, 0.1, len(a)), a, color=COLORS.get(init))
        ax.hlines(np.nanmean(a), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(list(runs))
    ax.set(ylabel="test-fold AUC", title="AUC per test fold")
    return _save(fig, out, name)


def save_results(out: Path, table, pairwise, le=None, runs: dict | None = None, budgets=None) -> None:
    """comparison.csv, pairwise.csv, label_efficiency.csv, label_budget.csv (the paired differences per label budget
    that the index repeats), comparison.json and provenance.json in ``out``."""
    table.to_csv(out / "comparison.csv")
    pairwise.to_csv(out / "pairwise.csv", index=False)
    doc = {"table": json.loads(table.to_json(orient="index"))}
    doc["pairwise"] = json.loads(pairwise.to_json(orient="records"))
    if le is not None:
        le.to_csv(out / "label_efficiency.csv", index=False)
        doc["label_efficiency"] = json.loads(le.to_json(orient="records"))
    if budgets is not None and len(budgets):
        budgets.to_csv(out / "label_budget.csv", index=False)
        doc["label_budget"] = json.loads(budgets.to_json(orient="records"))
    if runs:
        doc["runs"] = {i: str(r["dir"]) for i, r in runs.items()}
    write_json_atomic(out / "comparison.json", doc)
    provs = {i: Path(r["dir"]) / "provenance.json" for i, r in (runs or {}).items()}
    fps = {i: json.loads(p.read_text()).get("data_fingerprint") for i, p in provs.items() if p.exists()}
    cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else None
    write_provenance(out, cfg, data_fingerprint=next(iter(fps.values()), None), extra={"run_fingerprints": fps})
