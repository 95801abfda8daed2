"""Threshold transfer: re-fit a model's operating threshold and probability calibration on a few local labels.

A model keeps its ranking at another hospital more often than its threshold: a darker stain shifts every
probability. ``glomlib calibrate --model M --manifest LOCAL --out M2`` predicts the labelled local patches, fits a
probability calibration on them (Platt: a logistic regression on the logit; or isotonic, scikit-learn), picks a
new threshold on the calibrated probabilities (default ``fixed:0.5``, the local Bayes threshold once Platt has
matched the probabilities to the local labels; ``youden`` or ``sensitivity:0.9`` on request, see
:func:`glomlib.evaluate.metrics.choose_threshold`) and writes a **new** model file: same weights, metadata with
``calibration``, ``threshold``, ``threshold_rule`` and ``calibrated_from`` (the source file, its threshold, the
local manifest and its size). The source file is never touched and ``--out`` is never overwritten.
``glomlib predict`` / ``evaluate`` apply the stored calibration; ``evaluate`` reports before/after.

:func:`local_label_curve` answers "how many local labelled glomeruli are enough?": it fits on ``n`` glomeruli
drawn from some slides of a local set and measures on its other slides, for several ``n``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from glomlib.core.config import ConfigError, Device, PositiveInt, StepConfig
from glomlib.data.cache import load_images
from glomlib.data.manifest import data_fingerprint, file_sha256
from glomlib.evaluate import biopsy as B
from glomlib.evaluate import metrics as M
from glomlib.evaluate.external.lookup import read_for_model
from glomlib.evaluate.plots import save_figure
from glomlib.evaluate.predict import predict
from glomlib.models.calibration import CALIBRATION_METHODS, apply_calibration, logit
from glomlib.models.files import load_model, save_model

ID_DIGITS = 16  # hex digits of an image's sha256 recorded per calibration label


def fit_calibration(y: Any, prob: Any, method: str = "platt") -> dict[str, Any]:
    """Calibration parameters (see :mod:`glomlib.models.calibration`) fitted on labels ``y`` and raw ``prob``."""
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.size != p.size:
        raise ValueError(f"{y.size} labels but {p.size} probabilities.")
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"calibration needs positive and negative glomeruli; the local set has {n_pos} positive "
            f"and {n_neg} negative. Label a few of the missing class."
        )
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e4, max_iter=1000).fit(logit(p)[:, None], y)
        return {"method": "platt", "coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return {
            "method": "isotonic",
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
        }
    raise ValueError(f"method={method!r}: choose one of {list(CALIBRATION_METHODS)}.")


def refit(
    y: Any, raw_prob: Any, method: str = "platt", threshold_rule: str = M.LOCAL_THRESHOLD_RULE
) -> tuple[dict, float]:
    """``(calibration, threshold)``: the calibration of ``raw_prob`` and the threshold on calibrated probabilities."""
    cal = fit_calibration(y, raw_prob, method)
    thr = M.choose_threshold(y, apply_calibration(raw_prob, cal), threshold_rule)
    return cal, float(thr)


def calibrate_model(
    model: str | Path,
    manifest: str | Path,
    out: str | Path,
    method: str = "platt",
    threshold_rule: str = M.LOCAL_THRESHOLD_RULE,
    device: str = "auto",
    batch_size: int = 64,
    cache_dir: str = "",
) -> dict[str, Any]:
    """Write ``out``: ``model`` with a calibration and threshold re-fitted on ``manifest``. Returns the new metadata."""
    src, out = Path(model), Path(out)
    if out.exists():
        raise FileExistsError(
            f"--out {out} already exists; choose a new file name (model files are never overwritten)."
        )
    if out.resolve() == src.resolve():
        raise FileExistsError("--out must differ from --model: the source model file is never changed.")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"method={method!r}: choose one of {list(CALIBRATION_METHODS)}.")
    net, meta = load_model(src, device=device)
    df = read_for_model(manifest, meta, require_labels=True)
    if (df["y"] < 0).any():
        rows = df.loc[df["y"] < 0, "row"].tolist()[:5]
        raise ConfigError(f"{manifest}: every local glomerulus needs a label (unlabelled data rows e.g. {rows}).")
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    images = load_images(list(df["path"]), int(meta["image_size"]), hashes=list(df["sha256"]), **kw)
    raw = predict(net, meta, images, batch_size=batch_size, calibrated=False)
    y = df["y"].to_numpy().astype(int)
    cal, thr = refit(y, raw, method, threshold_rule)
    src_thr = float(meta.get("threshold", 0.5))
    if meta.get("calibration"):  # re-calibrating: the source is the network's own threshold
        src_thr = float(meta.get("calibrated_from", {}).get("threshold", src_thr))
    new_meta = {k: v for k, v in meta.items() if k not in ("format", "weights_dtype")}  # saved in float32
    new_meta.update(calibration=cal, threshold=thr, threshold_rule=threshold_rule)
    how = {"model": str(src.resolve()), "model_sha256": file_sha256(src), "threshold": src_thr}
    how.update(threshold_rule=meta.get("threshold_rule", "fixed:0.5 (default)"), manifest=str(Path(manifest).resolve()))
    how.update(data_fingerprint=data_fingerprint(df), n=int(y.size), n_pos=int(y.sum()))
    how.update(label_images=label_images(df))  # evaluate warns when its labels overlap these
    new_meta["calibrated_from"] = {**how, "n_slides": int(df["slide"].nunique())}
    save_model(net, new_meta, out)
    return new_meta


def label_images(df: pd.DataFrame) -> list[str]:
    """The fingerprint of a set of labelled images: the sorted short content hashes of its rows."""
    return sorted({str(h)[:ID_DIGITS] for h in df["sha256"]})


def calibration_overlap(meta: dict[str, Any], df: pd.DataFrame) -> str | None:
    """A warning when ``df``'s images include ones the model's calibration was fitted on (else None)."""
    src = meta.get("calibrated_from") if meta.get("calibration") else None
    fitted = set(src.get("label_images") or []) if isinstance(src, dict) else set()
    shared = int(pd.Series([str(h)[:ID_DIGITS] for h in df["sha256"]]).isin(fitted).sum()) if fitted else 0
    if not shared:
        return None
    return (
        f"{shared} of {len(df)} evaluated images were used to calibrate this model (glomlib calibrate on "
        f"{src.get('manifest')}): its threshold and calibration were fitted on them, so these figures are "
        "optimistic. Evaluate on labels the calibration never saw."
    )


# ----------------------------------------------------------------------------- how many local labels?
def local_split(slides: Sequence[str], fraction: float = 0.5, seed: int = 0) -> set[str]:
    """A random ``fraction`` of the slides (at least one, at most all but one): the calibration pool."""
    u = sorted(set(map(str, slides)))
    if len(u) < 2:
        raise ValueError("a slide-disjoint calibration/test split needs at least two slides.")
    k = min(len(u) - 1, max(1, int(round(fraction * len(u)))))
    return set(np.random.default_rng(seed).choice(u, size=k, replace=False).tolist())


def local_label_curve(
    pred: pd.DataFrame,
    sizes: Sequence[int] = (10, 20, 50, 100),
    repeats: int = 20,
    method: str = "platt",
    threshold_rule: str = M.LOCAL_THRESHOLD_RULE,
    pool_fraction: float = 0.5,
    seed: int = 0,
    source_threshold: float = 0.5,
) -> pd.DataFrame:
    """Fit on ``n`` glomeruli of some slides, measure on the other slides, for each ``n`` in ``sizes``.

    ``pred``: predictions of the *uncalibrated* model on a labelled local set (``slide``, ``y``, ``prob_raw`` or
    ``prob``). The slides are split once into a calibration pool (``pool_fraction``) and test slides; for each
    ``n`` and repeat, ``n`` glomeruli are drawn from the pool (redrawn until both classes occur) and the
    calibration + threshold are fitted on them. Row ``n = 0``: the model as shipped (``source_threshold``).
    Returns one row per (n, repeat) with the test slides' accuracy, balanced accuracy, sensitivity, specificity,
    Brier, ECE and the biopsy-level %-error (MAE of the share of positives) from mean probability and hard calls.
    """
    col = "prob_raw" if "prob_raw" in pred.columns else "prob"
    pool_slides = local_split(pred["slide"], pool_fraction, seed)
    in_pool = pred["slide"].astype(str).isin(pool_slides).to_numpy()
    pool, test = pred[in_pool].reset_index(drop=True), pred[~in_pool].reset_index(drop=True)
    rng = np.random.default_rng(seed + 1)
    rows = [{"n": 0, "repeat": 0, "n_pos": 0, **_measure(test, test[col].to_numpy(float), float(source_threshold))}]
    yp = pool["y"].to_numpy().astype(int)
    for n in (n for n in sizes if n <= len(pool)):
        for r in range(repeats):
            idx = _draw_both_classes(rng, yp, int(n))
            if idx is None:
                continue
            cal, thr = refit(yp[idx], pool[col].to_numpy(float)[idx], method, threshold_rule)
            prob = apply_calibration(test[col].to_numpy(float), cal)
            rows.append({"n": int(n), "repeat": r, "n_pos": int(yp[idx].sum()), **_measure(test, prob, thr)})
    out = pd.DataFrame(rows)
    out.attrs.update(pool_slides=sorted(pool_slides), test_slides=sorted(set(test["slide"].astype(str))))
    out.attrs.update(n_pool=int(len(pool)), n_test=int(len(test)), method=method, threshold_rule=threshold_rule)
    return out


def _draw_both_classes(rng: np.random.Generator, y: np.ndarray, n: int, tries: int = 100) -> np.ndarray | None:
    """``n`` indices of ``y`` drawn without replacement, redrawn until both classes occur (None after ``tries``)."""
    for _ in range(tries):
        idx = rng.choice(len(y), size=n, replace=False)
        if 0 < y[idx].sum() < n:
            return idx
    return None


def _measure(test: pd.DataFrame, prob: np.ndarray, thr: float) -> dict[str, float]:
    m = M.binary_metrics(test["y"], prob, threshold=thr)
    t = B.biopsy_table(test.assign(prob=prob), threshold=thr)
    keys = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece")
    mae = {f"biopsy_mae_{k}": float(t[f"diff_{k}"].abs().mean()) for k in ("prob", "hard")}
    return {k: m[k] for k in keys} | {"threshold": thr, **mae}


def summarise_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Median and 10th–90th percentile over repeats per ``n`` for the curve's metrics."""
    cols = ["accuracy", "balanced_accuracy", "brier", "ece", "biopsy_mae_prob", "biopsy_mae_hard", "threshold"]
    g = curve.groupby("n")[cols]
    med, lo, hi = g.median(), g.quantile(0.1), g.quantile(0.9)
    out = pd.DataFrame(index=med.index)
    out["repeats"] = curve.groupby("n").size()
    for c in cols:
        out[c] = [f"{m:.3f} [{a:.3f}, {b:.3f}]" if a != b else f"{m:.3f}" for m, a, b in zip(med[c], lo[c], hi[c])]
    return out


def curve_figure(curve: pd.DataFrame, title: str = "How many local labelled glomeruli are enough?"):
    """Median (and 10th–90th percentile band) of test-slide metrics against the number of local labels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        ("balanced_accuracy", "balanced accuracy"),
        ("ece", "ECE"),
        (("biopsy_mae_prob", "biopsy_mae_hard"), "biopsy share error (MAE)"),
    )
    g = curve.groupby("n")
    for ax, (cols, label) in zip(axes, panels):
        for c in cols if isinstance(cols, tuple) else (cols,):
            med, lo, hi = g[c].median(), g[c].quantile(0.1), g[c].quantile(0.9)
            x = np.arange(len(med))
            ax.plot(x, med.to_numpy(), marker="o", label=c.replace("biopsy_mae_", "from ") if "mae" in c else None)
            ax.fill_between(x, lo.to_numpy(), hi.to_numpy(), alpha=0.2)
        ax.set_xticks(np.arange(len(med)), ["as shipped" if n == 0 else str(n) for n in med.index])
        ax.set(xlabel="local labelled glomeruli", title=label)
        if isinstance(cols, tuple):
            ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def show_curve(curve: pd.DataFrame | None, out: str | Path | None = None) -> None:
    """Notebook: display :func:`curve_figure` once (and save ``<out>/figures/local_label_curve.png``)."""
    if curve is None:
        return None
    import matplotlib.pyplot as plt
    from IPython.display import display

    fig = curve_figure(curve)
    if out is not None:
        save_figure(fig, out, "local_label_curve")
    display(fig)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------------------------- CLI
@dataclasses.dataclass(frozen=True)
class CalibrateConfig(StepConfig):
    """Re-fit a model's threshold and probability calibration on local labels -> a new model file."""

    model: str  # model.safetensors to adapt (left untouched)
    manifest: str  # labelled local manifest CSV (path, label, slide)
    out: str  # new model file to write (must not exist)
    method: Literal["platt", "isotonic"] = "platt"  # probability calibration (isotonic needs more labels)
    threshold_rule: str = M.LOCAL_THRESHOLD_RULE  # fixed:0.5 | youden | sensitivity:0.9, on calibrated probabilities
    device: Device = "auto"  # auto | cpu | cuda
    batch_size: PositiveInt = 64  # images per forward pass


def cli_run(cfg: CalibrateConfig) -> int:
    """``glomlib calibrate``: write the calibrated model and say what it was fitted on."""
    how = {k: getattr(cfg, k) for k in ("method", "threshold_rule", "device", "batch_size")}
    meta = calibrate_model(cfg.model, cfg.manifest, cfg.out, **how)
    src = meta["calibrated_from"]
    print(
        f"wrote {cfg.out}: {meta['calibration']['method']} calibration and threshold {meta['threshold']:.3f} "
        f"({meta['threshold_rule']}) fitted on {src['n']} local glomeruli ({src['n_pos']} positive, "
        f"{src['n_slides']} slides); the source model's threshold was {src['threshold']:.3f}. "
        f"{cfg.model} is unchanged."
    )
    return 0
