"""External validation: apply a saved model to any labelled manifest (e.g. another hospital) and measure it.

``glomlib evaluate --model M --manifest CSV --out DIR`` (or :func:`run_evaluate` / notebook 06) predicts every
image of a labelled manifest — patches of any size, RGB or RGBA, resized to the model's image size — and writes:

* ``predictions.csv`` — path, slide, patient, center, label, y, ``prob`` (calibrated when the model file carries a
  calibration), ``prob_raw`` (the network's own), ``pred`` (``prob >= threshold``);
* ``metrics.json`` — AUC, accuracy, weighted F1, balanced accuracy, sensitivity, specificity, Brier and ECE with
  slide-bootstrap 95 % CIs, the threshold used and where it came from (the model file's ``threshold`` and
  ``threshold_rule``), per centre, and — for a model written by ``glomlib calibrate`` — before/after calibration;
* ``per_slide.csv``, ``per_center.csv``, ``biopsy_table.csv`` (per-biopsy shares, see :mod:`glomlib.evaluate.biopsy`);
* ``figures/reliability.png``, ``figures/bland_altman.png``; ``config.json``, ``provenance.json``.

Nothing is overwritten: ``--out`` must be new (``auto``: ``runs/<UTC stamp>-evaluate``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core.config import ConfigError, StepConfig, add_config_arguments, config_from_args
from glomlib.core.io import ensure_new_dir, new_run_dir, write_csv_atomic, write_json_atomic, write_provenance
from glomlib.data.cache import load_images
from glomlib.data.manifest import data_fingerprint, read_manifest
from glomlib.evaluate import biopsy as B
from glomlib.evaluate import calibrate as CAL
from glomlib.evaluate import metrics as M
from glomlib.evaluate import uncertainty as U
from glomlib.evaluate.plots import save_figure
from glomlib.evaluate.predict import predict
from glomlib.models.calibration import apply_calibration
from glomlib.models.files import load_model, read_model_meta


@dataclasses.dataclass
class EvaluateConfig(StepConfig):
    """Parameters of notebook 06 (``notebooks/06_external_validation.ipynb``) and of ``glomlib evaluate``."""

    model: str = "latest"  # model.safetensors, a fine-tune run folder, or "latest" (newest under runs/; with manifest auto the newest fold model)
    manifest: str = "auto"  # labelled manifest CSV to evaluate on (path, label, slide[, patient, center]); auto: the test slides of a fold model of the run (see data)
    data: str = "data/glomeruli-pas/manifest.csv"  # the model's own training manifest, used only by manifest auto
    out: str = "auto"  # new output folder; "auto" = runs/<stamp>-evaluate
    by: str = "slide"  # biopsy unit: slide | patient
    biopsy_rule: str = "auto"  # oxford_m | gs_bands | cuts:0.1,0.2 | auto (gs_bands for GS, else oxford_m)
    n_boot: int = 1000  # slide-bootstrap resamples for the 95-percent CIs
    seed: int = 0  # bootstrap seed
    n_bins: int = 10  # bins of the reliability diagram and ECE
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    batch_size: int = 64  # images per forward pass
    cache_dir: str = ""  # image cache folder ("" = glomlib.data.cache default)

    def validate(self) -> None:
        if self.by not in ("slide", "patient"):
            raise ConfigError(f"by={self.by!r}: choose 'slide' or 'patient'.")
        if self.biopsy_rule != "auto":
            try:
                B.parse_rule(self.biopsy_rule)
            except ValueError as e:
                raise ConfigError(str(e)) from e
        if int(self.n_boot) < 0:
            raise ConfigError(f"n_boot={self.n_boot}: must be >= 0.")


def find_latest_model(root: str | Path = "runs") -> Path:
    """Newest ``model.safetensors`` under ``root`` (by modification time)."""
    root = Path(root)
    found = sorted(root.glob("**/model.safetensors"), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if not found:
        raise FileNotFoundError(
            f"model='latest' but no model.safetensors exists under {root.resolve()}. Run a "
            "fine-tune first (notebook 03 or `glomlib finetune`), or pass --model PATH."
        )
    return found[-1]


def resolve_model(spec: str | Path) -> Path:
    """A model file from a path, a run folder (``<dir>/model.safetensors``) or ``latest``."""
    if str(spec) in ("latest", ""):
        return find_latest_model("runs")
    p = Path(spec)
    if p.is_dir():
        p = p / "model.safetensors"
    read_model_meta(p)  # clear error when missing or not a model file
    return p


def latest_fold_model(root: str | Path = "runs") -> tuple[Path, list[str]]:
    """The newest fold model (all labels) under ``root`` with the slides it never saw (``model latest`` with
    ``manifest auto``)."""
    root = Path(root)
    found = sorted(root.glob("**/checkpoints/*/model.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for f in found:
        try:
            m = read_model_meta(f)
        except ValueError:
            continue
        if m.get("test_slides") and float(m.get("label_fraction", 1.0)) >= 1:
            return f, [str(s) for s in m["test_slides"]]
    raise FileNotFoundError(
        f"model latest with manifest auto: no fold model (checkpoints/<fold>/model.safetensors with "
        f"test slides) under {root.resolve()}. Run a fine-tune first (notebook 03 or `glomlib "
        "finetune`), or pass model and a labelled manifest of slides the model never saw."
    )


def held_out_slides(model_path: Path) -> tuple[Path, list[str]]:
    """``manifest auto``: a model that knows the slides it never saw — a fold model (metadata ``test_slides``), or
    the first fold model of a fine-tune run whose final model is given. Returns (model file, held-out slides)."""
    meta = read_model_meta(model_path)
    if meta.get("test_slides"):
        return model_path, [str(s) for s in meta["test_slides"]]
    folds = sorted(model_path.parent.glob("checkpoints/*/model.safetensors"))
    for f in folds:
        m = read_model_meta(f)
        if m.get("test_slides") and float(m.get("label_fraction", 1.0)) >= 1:
            return f, [str(s) for s in m["test_slides"]]
    raise ConfigError(
        f"manifest auto: {model_path} was trained on every slide of its data and no fold model with "
        "test slides lies beside it; pass a labelled manifest of slides it never saw (manifest PATH)."
    )


def held_out_rows(data: str | Path, slides: list[str], meta: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of the manifest ``data`` (read and validated) whose slide is in ``slides``."""
    df = read_manifest(
        data,
        positive_label=meta["positive_label"],
        negative_label=meta.get("negative_label") or None,
        require_labels=True,
    )
    sub = df[df["slide"].astype(str).isin(set(slides))].reset_index(drop=True)
    missing = sorted(set(slides) - set(sub["slide"].astype(str)))
    if missing or sub.empty:
        raise ConfigError(
            f"manifest auto: the model's held-out slides {missing or slides} are not in {data}; pass "
            "data (the model's training manifest) or a manifest PATH."
        )
    return sub


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


# ------------------------------------------------------------------------------------------------ the step
@dataclasses.dataclass
class EvaluateResult:
    out: Path
    predictions: pd.DataFrame
    metrics: dict  # the content of metrics.json
    per_slide: pd.DataFrame
    per_center: pd.DataFrame
    biopsy: B.BiopsyReadout
    meta: dict  # the model file's metadata

    def table(self) -> pd.DataFrame:
        """Overall and per-centre metrics with 95 % CIs (and before/after calibration when present)."""
        blocks = {"all images": self.metrics["overall"]}
        blocks.update({f"centre {c}": b for c, b in self.metrics["per_center_ci"].items()})
        if self.metrics.get("before_calibration"):
            blocks = {"before calibration (all images)": self.metrics["before_calibration"], **blocks}
        return ci_table(blocks)


def _prepare_out(out: str) -> Path:
    if out in ("auto", "", None):
        return new_run_dir("runs", "evaluate")
    return ensure_new_dir(out)


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
    doc: dict[str, Any] = {
        "threshold": thr,
        "threshold_rule": meta.get("threshold_rule", "fixed:0.5 (default)"),
        "calibration": meta.get("calibration"),
        "positive_label": meta.get("positive_label"),
        "negative_label": meta.get("negative_label"),
        "bootstrap": {"n_boot": int(n_boot), "unit": "slide", "seed": int(seed)},
        "overall": metrics_with_ci(pred["y"], pred["prob"], groups, thr, n_boot, seed),
        "per_center_ci": {},
        "before_calibration": None,
    }
    if pred["center"].astype(str).ne("").any():
        for c, g in pred.groupby("center", sort=True):
            doc["per_center_ci"][str(c)] = metrics_with_ci(g["y"], g["prob"], g["slide"].astype(str), thr, n_boot, seed)
    src = meta.get("calibrated_from")
    if meta.get("calibration") and isinstance(src, Mapping):
        thr0 = float(src.get("threshold", 0.5))
        doc["before_calibration"] = {
            **metrics_with_ci(pred["y"], pred["prob_raw"], groups, thr0, n_boot, seed),
            "threshold": thr0,
        }
    rule = rule_for(meta, biopsy_rule)
    ro = B.readouts(pred, threshold=thr, rule=rule, by=by)
    doc["biopsy"] = ro.to_dict()
    if doc["before_calibration"] is not None:
        ro0 = B.readouts(
            pred.assign(prob=pred["prob_raw"]), threshold=doc["before_calibration"]["threshold"], rule=rule, by=by
        )
        doc["biopsy_before_calibration"] = ro0.to_dict()
    return doc


def run_evaluate(cfg: EvaluateConfig | None = None, **params: Any) -> EvaluateResult:
    """Evaluate ``cfg.model`` on the labelled ``cfg.manifest`` and write the outputs (module docstring)."""
    cfg = cfg if cfg is not None else EvaluateConfig.from_params(**params)
    cfg.validate()
    if not cfg.manifest:
        raise ConfigError(
            "manifest is empty: pass a labelled manifest CSV (path, label, slide[, center]) to "
            "evaluate on, e.g. --manifest other_hospital.csv (or manifest auto: the slides a fold "
            "model of the fine-tune run never saw)."
        )
    held_out: list[str] | None = None
    if cfg.manifest == "auto" and cfg.model in ("latest", ""):
        model_path, held_out = latest_fold_model("runs")
    else:
        model_path = resolve_model(cfg.model)
        if cfg.manifest == "auto":
            model_path, held_out = held_out_slides(model_path)
    model, meta = load_model(model_path, device=cfg.device)
    if held_out is not None:
        df = held_out_rows(cfg.data, held_out, meta)
    else:
        df = read_manifest(
            cfg.manifest,
            positive_label=meta["positive_label"],
            negative_label=meta.get("negative_label") or None,
            require_labels=True,
        )
    if int((df["y"] == 1).sum()) == 0 and int((df["y"] == 0).sum()) == 0:
        raise ConfigError(
            f"{cfg.manifest}: no image is labelled {meta['positive_label']!r} or "
            f"{meta.get('negative_label')!r} (the model's labels); found {sorted(set(df['label']))}."
        )
    unlabeled = df.index[df["y"] < 0]
    if len(unlabeled):
        raise ConfigError(
            f"{cfg.manifest}: {len(unlabeled)} row(s) have no label (e.g. data rows "
            f"{df.loc[unlabeled[:5], 'row'].tolist()}); evaluation needs every image labelled — "
            "use `glomlib predict` for unlabelled patches."
        )
    out = _prepare_out(cfg.out)  # claimed only once model and data are known to be usable
    manifest = cfg.manifest
    if held_out is not None:  # record exactly which rows were evaluated
        manifest = str(out / "manifest.csv")
        write_csv_atomic(df[[c for c in ("path", "label", "slide", "patient", "center") if c in df.columns]], manifest)
    cfg_dict = {**cfg.to_dict(), "out": str(out), "model": str(model_path), "manifest_used": str(manifest)}
    write_json_atomic(out / "config.json", cfg_dict)
    fp = data_fingerprint(df)
    write_provenance(out, cfg_dict, fp, extra={"model_meta": meta, "n_images": int(len(df))})
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    images = load_images(list(df["path"]), int(meta["image_size"]), hashes=list(df["sha256"]), **kw)
    raw = predict(model, meta, images, batch_size=cfg.batch_size, calibrated=False)
    prob = apply_calibration(raw, meta.get("calibration"))
    thr = float(meta.get("threshold", 0.5))
    pred = pd.DataFrame(
        {
            "path": df["path"],
            "slide": df["slide"].astype(str),
            "patient": df["patient"].astype(str),
            "center": df["center"].astype(str),
            "label": df["label"],
            "y": df["y"].astype(int),
            "prob": prob,
            "prob_raw": raw,
            "pred": (prob >= thr).astype(int),
        }
    )
    doc = evaluate_predictions(pred, meta, by=cfg.by, biopsy_rule=cfg.biopsy_rule, n_boot=cfg.n_boot, seed=cfg.seed)
    doc.update(
        {
            "model": str(model_path),
            "manifest": str(Path(manifest).resolve()),
            "data_fingerprint": fp,
            "held_out_slides": held_out,
        }
    )
    per_slide = per_group_table(pred, "slide", thr)
    per_center = per_group_table(pred, "center", thr)
    ro = B.readouts(pred, threshold=thr, rule=rule_for(meta, cfg.biopsy_rule), by=cfg.by)
    write_csv_atomic(pred, out / "predictions.csv")
    write_csv_atomic(per_slide, out / "per_slide.csv")
    write_csv_atomic(per_center, out / "per_center.csv")
    write_csv_atomic(ro.table.reset_index(), out / "biopsy_table.csv")
    write_json_atomic(out / "metrics.json", _clean(doc))
    import matplotlib.pyplot as plt

    probs = {"model": prob} if not meta.get("calibration") else {"before calibration": raw, "calibrated": prob}
    fig = reliability_figure(pred["y"], probs, n_bins=cfg.n_bins)
    save_figure(fig, out, "reliability")
    plt.close(fig)
    fig = B.bland_altman_figure(ro.table, positive_label=str(meta["positive_label"]))
    save_figure(fig, out, "bland_altman")
    plt.close(fig)
    return EvaluateResult(
        out=out, predictions=pred, metrics=doc, per_slide=per_slide, per_center=per_center, biopsy=ro, meta=meta
    )


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


# ------------------------------------------------------------------------------------------ notebook 06
def show_summary(result: EvaluateResult) -> pd.DataFrame:
    """Notebook: the threshold used (and where it came from), then metrics with 95 % CIs, overall and per centre."""
    from IPython.display import Markdown, display

    m = result.metrics
    lines = [f"**Threshold used: {m['threshold']:.3f}** — rule `{m['threshold_rule']}`, read from the model file."]
    if m.get("before_calibration"):
        cal = m["calibration"]
        lines.append(
            f"The model file carries a **{cal['method']}** calibration fitted on local labels; 'before "
            f"calibration' is the network's own probability with its original threshold "
            f"{m['before_calibration']['threshold']:.3f}."
        )
    lines.append(f"95 % CIs: percentile bootstrap over whole slides ({m['bootstrap']['n_boot']} resamples).")
    display(Markdown("\n\n".join(lines)))
    return result.table().T


def show_reliability(result: EvaluateResult):
    """Notebook: the reliability diagram written by :func:`run_evaluate`."""
    from IPython.display import Image

    return Image(filename=str(result.out / "figures" / "reliability.png"))


@dataclasses.dataclass
class ExternalValidationConfig(EvaluateConfig):
    """Parameters of notebook 06: :class:`EvaluateConfig` plus the threshold-transfer experiment."""

    local_sizes: list = dataclasses.field(
        default_factory=lambda: [10, 20, 50, 100]
    )  # local labelled glomeruli to re-fit on
    repeats: int = 20  # random draws per size
    calibration: str = "platt"  # platt | isotonic
    threshold_rule: str = "youden"  # youden | sensitivity:0.9 | fixed:0.5
    pool_fraction: float = 0.5  # share of the external slides that may give local labels; the rest are the test slides

    def validate(self) -> None:
        super().validate()
        if isinstance(self.local_sizes, (int, str)):
            self.local_sizes = [int(x) for x in str(self.local_sizes).strip("[]").split(",") if x.strip()]
        self.local_sizes = [int(x) for x in self.local_sizes]
        if any(n < 2 for n in self.local_sizes):
            raise ConfigError(f"local_sizes={self.local_sizes}: each must be at least 2 (both classes needed).")
        if self.calibration not in ("platt", "isotonic"):
            raise ConfigError(f"calibration={self.calibration!r}: choose platt or isotonic.")
        if not 0 < float(self.pool_fraction) < 1:
            raise ConfigError(f"pool_fraction={self.pool_fraction}: must be in (0, 1).")


def label_curve(result: EvaluateResult, cfg: ExternalValidationConfig) -> pd.DataFrame | None:
    """How many local labels are enough (:func:`glomlib.evaluate.calibrate.local_label_curve`) on the evaluated
    set's raw probabilities, starting from the model as shipped; None (with a printed reason) when the set has
    fewer than 4 slides or too few glomeruli in the calibration pool."""
    pred = result.predictions
    if pred["slide"].nunique() < 4:
        print(f"Only {pred['slide'].nunique()} slide(s): too few for a slide-disjoint calibration/test split.")
        return None
    src = result.meta.get("calibrated_from") if result.meta.get("calibration") else None
    thr0 = float(src["threshold"]) if isinstance(src, Mapping) else float(result.meta.get("threshold", 0.5))
    curve = CAL.local_label_curve(
        pred,
        sizes=cfg.local_sizes,
        repeats=cfg.repeats,
        method=cfg.calibration,
        threshold_rule=cfg.threshold_rule,
        pool_fraction=cfg.pool_fraction,
        seed=cfg.seed,
        source_threshold=thr0,
    )
    write_csv_atomic(curve, result.out / "local_label_curve.csv")
    return curve


# ------------------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="measure a saved model on a labelled manifest (external validation)",
        description=__doc__.splitlines()[0],
    )
    add_config_arguments(p, EvaluateConfig)

    def _run(args: argparse.Namespace) -> int:
        res = run_evaluate(config_from_args(EvaluateConfig, args))  # errors: glomlib.cli maps them to exit codes
        print(f"output folder: {res.out}")
        print(f"threshold {res.metrics['threshold']:.3f} ({res.metrics['threshold_rule']})")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(res.table().T.to_string())
            print(res.biopsy.agreement.round(3).to_string())
            before = res.metrics.get("biopsy_before_calibration")
            if before:
                print(
                    "before calibration: "
                    + ", ".join(f"{k} MAE {v['mae']:.3f}" for k, v in before["agreement"].items())
                )
        return 0

    p.set_defaults(func=_run)


__all__ = [
    "EvaluateConfig",
    "EvaluateResult",
    "run_evaluate",
    "evaluate_predictions",
    "metrics_with_ci",
    "centre_summary",
    "resolve_model",
    "find_latest_model",
    "ExternalValidationConfig",
    "label_curve",
    "centre_table",
    "held_out_slides",
    "held_out_rows",
    "reliability_figure",
    "ci_table",
    "per_group_table",
    "register",
]
