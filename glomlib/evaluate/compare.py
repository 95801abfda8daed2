"""Compare fine-tuning initialisations honestly (notebook 04).

* :func:`collect_runs` reads finished fine-tune runs laid out as ``<runs>/<init>/`` (what ``glomlib run`` and
  notebook 03 write); :func:`run_or_collect` also runs the missing inits (into ``<out>/finetune/<init>``).
* :func:`comparison_table` — the study's table: mean ± std over slide-grouped test folds per init.
* :func:`pairwise_tests` — for every pair of inits, the AUC difference on the same out-of-fold images with a
  slide-grouped bootstrap 95% CI and a paired DeLong p-value.
* :func:`label_efficiency` — AUC (mean ± std over folds) vs the fraction of training labels, per init; runs
  the fine-tunes that are not present yet (``<runs>/label_efficiency/<init>_frac<f>`` are reused).
* :func:`plot_roc`, :func:`plot_reliability`, :func:`plot_label_efficiency`, :func:`plot_fold_aucs` — figures.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from glomlib.core.config import ConfigError, StepConfig
from glomlib.train.finetune import INITS, FinetuneConfig, load_run

#: The study's numbers (KSN 2025 abstract), M1 vs M0, for reference next to ours.
STUDY_REFERENCE = {
    "glom": {"auc": "0.890 ± 0.007", "accuracy": "0.810 ± 0.004", "f1_weighted": "0.811 ± 0.003"},
    "imagenet": {"auc": "0.796 ± 0.013"},
    "scratch": {"auc": "0.637 ± 0.027"},
}
COLORS = {"glom": "tab:green", "imagenet": "tab:blue", "scratch": "tab:grey"}


@dataclasses.dataclass
class CompareConfig(StepConfig):
    """Parameters of notebook 04 (``notebooks/04_baseline_comparison.ipynb``)."""

    runs: str = "auto"                      # folder with <init>/ fine-tune runs; "auto" = run them into out/finetune
    out: str = "auto"                       # output folder; "auto" = runs/<stamp>-comparison
    data: str = "data/glomeruli-pas/manifest.csv"  # manifest CSV (used only for runs that must be computed)
    inits: list = dataclasses.field(default_factory=lambda: list(INITS))  # initialisations to compare
    run_missing: bool = True                # run the fine-tunes that `runs` lacks (False: error instead)
    positive_label: str = "M1"              # positive class (for runs that must be computed)
    ssl_checkpoint: str = "latest"          # encoder for init=glom runs that must be computed
    backbone: str = "efficientnet_lite0"    # backbone for runs that must be computed
    image_size: int = 96                    # image size for runs that must be computed
    epochs: int = 15                        # max epochs for runs that must be computed
    batch_size: int = 32                    # batch size for runs that must be computed
    lr: float = 1e-3                        # learning rate for runs that must be computed
    folds: int = 5                          # CV folds for runs that must be computed
    seeds: list = dataclasses.field(default_factory=lambda: [0])  # CV seeds for runs that must be computed
    device: str = "auto"                    # auto | cpu | cuda
    n_boot: int = 2000                      # bootstrap resamples (slide-grouped) per pairwise difference
    label_efficiency: bool = True           # compute the label-efficiency curve
    fractions: list = dataclasses.field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0])  # label fractions
    le_epochs: int = 15                     # max epochs of label-efficiency runs that must be computed
    le_folds: int = 5                       # CV folds of label-efficiency runs that must be computed
    progress: bool = True                   # tqdm progress bars

    def validate(self) -> None:
        for name, conv in (("inits", str), ("fractions", float), ("seeds", int)):
            v = getattr(self, name)
            if isinstance(v, str):  # "a,b" or "[a, b]" from the shell / papermill -p
                v = [conv(x.strip().strip("'\"")) for x in v.strip("[]() ").split(",") if x.strip()]
            setattr(self, name, v)
        bad = [i for i in self.inits if i not in INITS]
        if bad or not self.inits:
            raise ConfigError(f"inits={self.inits}: choose from {list(INITS)}.")
        if isinstance(self.fractions, (int, float)):
            self.fractions = [self.fractions]
        if any(not (0 < float(f) <= 1) for f in self.fractions):
            raise ConfigError(f"fractions={self.fractions}: each must be in (0, 1].")
        self.fractions = sorted(float(f) for f in self.fractions)
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]


def prepare_out(cfg: CompareConfig) -> Path:
    from glomlib.core.io import ensure_new_dir, new_run_dir

    out = new_run_dir("runs", "comparison") if cfg.out in ("auto", "", None) else ensure_new_dir(cfg.out)
    (out / "figures").mkdir(exist_ok=True)
    cfg.save(out / "config.json")
    return out


def _finetune_cfg(cfg: CompareConfig, init: str, out: Path, **over: Any) -> FinetuneConfig:
    params = dict(init=init, data=cfg.data, out=str(out), positive_label=cfg.positive_label,
                  ssl_checkpoint=cfg.ssl_checkpoint, backbone=cfg.backbone, image_size=cfg.image_size,
                  epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, folds=cfg.folds, seeds=list(cfg.seeds),
                  device=cfg.device, progress=cfg.progress, resume=out.exists())
    params.update(over)
    return FinetuneConfig.from_params(**params)


def collect_runs(runs: str | Path, inits=INITS) -> dict[str, dict[str, Any]]:
    """``{init: load_run(<runs>/<init>)}`` for every init whose run folder is finished (has metrics.json)."""
    runs = Path(runs)
    found = {}
    for init in inits:
        d = runs / init
        if (d / "metrics.json").exists():
            found[init] = load_run(d)
    return found


def run_or_collect(cfg: CompareConfig, out: Path) -> dict[str, dict[str, Any]]:
    """Collect the inits present in ``cfg.runs``; run the others into ``<out>/finetune/<init>``."""
    from glomlib.train.finetune import run_finetune

    found = collect_runs(cfg.runs, cfg.inits) if cfg.runs not in ("auto", "", None) else {}
    for init in cfg.inits:
        if init in found:
            continue
        target = out / "finetune" / init
        if (target / "metrics.json").exists():
            found[init] = load_run(target)
            continue
        if not cfg.run_missing:
            raise FileNotFoundError(f"runs={cfg.runs!r} has no finished run for init={init!r} "
                                    f"({Path(cfg.runs) / init / 'metrics.json'} missing); run notebook 03 with "
                                    f"-p init {init}, or set run_missing=True.")
        run_finetune(_finetune_cfg(cfg, init, target))
        found[init] = load_run(target)
    return {i: found[i] for i in cfg.inits if i in found}


def comparison_table(runs: dict[str, dict[str, Any]], metrics=None, reference: bool = False):
    """One row per init: mean ± std of each metric over test folds (and seeds), plus the number of folds."""
    import pandas as pd

    from glomlib.evaluate.metrics import METRIC_LABELS, METRICS

    metrics = metrics or METRICS
    rows = []
    for init, r in runs.items():
        summ = r["metrics"]["summary"]
        row = {"init": init}
        for m in metrics:
            if m in summ:
                row[METRIC_LABELS[m]] = summ[m].get("text") or f"{summ[m]['mean']:.3f} ± {summ[m]['std']:.3f}"
        row["folds × seeds"] = len(r["metrics"]["per_fold"])
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
        import warnings

        warnings.warn("the runs predicted different images; only the images common to all are compared.")
    return merged.reset_index()


def pairwise_tests(runs: dict[str, dict[str, Any]], n_boot: int = 2000, seed: int = 0):
    """Pairwise AUC differences on the pooled out-of-fold predictions: slide-grouped bootstrap CI + DeLong p."""
    from glomlib.evaluate.metrics import pairwise_comparisons

    oof = paired_oof(runs)
    probs = {i: oof[i].to_numpy() for i in runs}
    return pairwise_comparisons(oof["y"].to_numpy(), probs, groups=oof["slide"].to_numpy(), n_boot=n_boot, seed=seed)


def per_center_auc(runs: dict[str, dict[str, Any]]):
    """AUC within each centre (pooled out-of-fold predictions): a model that learnt stain/centre rather than the
    lesion looks good overall but not within a centre. NaN where a centre has only one class."""
    import pandas as pd

    from glomlib.evaluate.metrics import auc

    rows = []
    for init, r in runs.items():
        p = r["predictions"]
        for c, g in p.groupby("center", sort=True):
            rows.append({"init": init, "center": c or "(none)", "n": len(g), "n_pos": int(g["y"].sum()),
                         "auc": auc(g["y"], g["prob"])})
    t = pd.DataFrame(rows)
    wide = t.pivot(index="center", columns="init", values="auc")[list(runs)]
    counts = t.drop_duplicates("center").set_index("center")[["n", "n_pos"]]
    return counts.join(wide)


def label_efficiency(cfg: CompareConfig, out: Path, main_runs: dict[str, dict[str, Any]] | None = None):
    """AUC vs label fraction per init. Reuses ``<runs>/label_efficiency/<init>_frac<f>`` and, for fraction 1.0,
    the main runs; runs the missing ones (``le_epochs``, ``le_folds``) into ``<out>/label_efficiency/``."""
    import pandas as pd

    from glomlib.train.finetune import run_finetune

    rows = []
    src = Path(cfg.runs) / "label_efficiency" if cfg.runs not in ("auto", "", None) else None
    for init in cfg.inits:
        for f in cfg.fractions:
            r = None
            if f >= 1.0 and main_runs and init in main_runs:
                r = main_runs[init]
            name = f"{init}_frac{f:g}"
            for cand in ([src / name] if src else []) + [out / "label_efficiency" / name]:
                if r is None and (cand / "metrics.json").exists():
                    r = load_run(cand)
            if r is None:
                if not cfg.run_missing:
                    raise FileNotFoundError(f"no label-efficiency run for {name}; set run_missing=True.")
                target = out / "label_efficiency" / name
                run_finetune(_finetune_cfg(cfg, init, target, label_fraction=f, epochs=cfg.le_epochs,
                                           folds=cfg.le_folds, final_model=False))
                r = load_run(target)
            pf = pd.DataFrame(r["metrics"]["per_fold"])
            s = r["metrics"]["summary"]["auc"]
            rows.append({"init": init, "fraction": f, "auc_mean": s["mean"], "auc_std": s["std"],
                         "auc_text": s["text"], "n_folds": len(pf),
                         "n_train_median": float(pf["n_train"].median()) if "n_train" in pf else np.nan,
                         "run": str(r["dir"])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ figures
def _save(fig, out: Path | None, name: str):
    if out is not None:
        (Path(out) / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out) / "figures" / name, dpi=130, bbox_inches="tight")
    return fig


def plot_roc(runs: dict[str, dict[str, Any]], out: Path | None = None, name: str = "roc.png"):
    """ROC curves of the pooled out-of-fold predictions, one per init (AUC mean ± std over folds in the legend)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for init, r in runs.items():
        p = r["predictions"].groupby("path").agg(y=("y", "first"), prob=("prob", "mean"))
        fpr, tpr, _ = roc_curve(p["y"], p["prob"])
        ax.plot(fpr, tpr, color=COLORS.get(init), label=f"{init}: AUC {r['metrics']['summary']['auc']['text']}")
    ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8)
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           title="ROC, out-of-fold predictions (slide-grouped CV)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, name)


def plot_reliability(runs: dict[str, dict[str, Any]], out: Path | None = None, n_bins: int = 10,
                     name: str = "reliability.png"):
    """Reliability diagram per init: observed positive fraction vs mean predicted probability per bin."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate.metrics import expected_calibration_error, reliability_table

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
    for ax, (init, r) in zip(axes[0], runs.items()):
        p = r["predictions"]
        t = reliability_table(p["y"], p["prob"], n_bins=n_bins)
        ok = t["count"] > 0
        centers = (t["bin_lo"] + t["bin_hi"]) / 2
        ax.bar(centers[ok], t["frac_pos"][ok], width=1 / n_bins, alpha=0.5, color=COLORS.get(init),
               edgecolor="k", label="observed")
        ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8, label="perfect calibration")
        for c, n, fp in zip(centers[ok], t["count"][ok], t["frac_pos"][ok]):
            ax.text(c, min(fp + 0.02, 0.95), f"{int(n)}", ha="center", fontsize=6)
        ece = expected_calibration_error(p["y"], p["prob"], n_bins=n_bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed positive fraction",
               title=f"{init} (pooled ECE {ece:.3f})")
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return _save(fig, out, name)


def plot_label_efficiency(le, out: Path | None = None, name: str = "label_efficiency.png"):
    """AUC (mean ± std over folds) vs label fraction, one line per init."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for init, g in le.groupby("init", sort=False):
        g = g.sort_values("fraction")
        ax.errorbar(g["fraction"] * 100, g["auc_mean"], yerr=g["auc_std"], marker="o", capsize=3,
                    color=COLORS.get(init), label=init)
    ax.set_xscale("log")
    ticks = sorted(le["fraction"].unique() * 100)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(top=min(1.02, ax.get_ylim()[1]))
    ax.set(xlabel="training labels used (% of the training folds)", ylabel="AUC (mean ± std over test folds)",
           title="Label efficiency")
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


def save_results(out: Path, table, pairwise, le=None, runs: dict | None = None) -> None:
    """comparison.csv, pairwise.csv, label_efficiency.csv, comparison.json and provenance.json in ``out``."""
    from glomlib.core.io import write_json_atomic, write_provenance

    table.to_csv(out / "comparison.csv")
    pairwise.to_csv(out / "pairwise.csv", index=False)
    doc = {"table": json.loads(table.to_json(orient="index")), "pairwise": json.loads(pairwise.to_json(orient="records"))}
    if le is not None:
        le.to_csv(out / "label_efficiency.csv", index=False)
        doc["label_efficiency"] = json.loads(le.to_json(orient="records"))
    if runs:
        doc["runs"] = {i: str(r["dir"]) for i, r in runs.items()}
    write_json_atomic(out / "comparison.json", doc)
    fps = {i: json.loads((Path(r["dir"]) / "provenance.json").read_text()).get("data_fingerprint")
           for i, r in (runs or {}).items() if (Path(r["dir"]) / "provenance.json").exists()}
    write_provenance(out, json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else None,
                     data_fingerprint=next(iter(fps.values()), None), extra={"run_fingerprints": fps})


__all__ = ["CompareConfig", "collect_runs", "run_or_collect", "comparison_table", "paired_oof", "pairwise_tests",
           "label_efficiency", "per_center_auc", "plot_roc", "plot_reliability", "plot_label_efficiency", "plot_fold_aucs",
           "save_results", "prepare_out", "STUDY_REFERENCE"]
