"""The evaluate step: predict a labelled manifest with a saved model and write every output; notebook helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from glomlib.core.config import ConfigError
from glomlib.core.io import ensure_new_dir, new_run_dir, write_csv_atomic, write_json_atomic, write_provenance
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.data.cache import load_images
from glomlib.data.manifest import data_fingerprint
from glomlib.data.public import ensure_default_manifest
from glomlib.evaluate import biopsy as B
from glomlib.evaluate import biopsy_ci as BCI
from glomlib.evaluate import calibrate as CAL
from glomlib.evaluate.external.config import EvaluateConfig, ExternalValidationConfig
from glomlib.evaluate.external.lookup import (
    held_out_rows,
    held_out_slides,
    latest_fold_model,
    read_for_model,
    resolve_model,
)
from glomlib.evaluate.external.tables import (
    _clean,
    ci_table,
    evaluate_predictions,
    per_group_table,
    reliability_figure,
    rule_for,
)
from glomlib.evaluate.plots import save_figure
from glomlib.evaluate.predict import member_probs, member_spread, model_input, predict
from glomlib.evaluate.qc import qc_column, qc_line, qc_summary, sizes_checked
from glomlib.models.bundle import combine_probs, is_bundle
from glomlib.models.calibration import apply_calibration
from glomlib.models.files import load_model


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


def _model_and_rows(cfg: EvaluateConfig) -> tuple[Path, list[str] | None, Any, dict, pd.DataFrame]:
    """The model file (lookups: ``latest``, a run folder, a fold model for ``manifest auto``) and the rows."""
    if not cfg.manifest:
        raise ConfigError(
            "manifest is empty: pass a labelled manifest CSV (path, label, slide[, center]) to evaluate on, e.g. "
            "--manifest other_hospital.csv (or manifest auto: the slides a fold model of the fine-tune run never saw)."
        )
    held_out = None
    if cfg.manifest == "auto" and cfg.model in ("latest", ""):
        model_path, held_out = latest_fold_model("runs")
    else:
        model_path = resolve_model(cfg.model)
        if cfg.manifest == "auto":
            model_path, held_out = held_out_slides(model_path)
    model, meta = load_model(model_path, device=cfg.device)
    if held_out is not None:
        data = ensure_default_manifest(cfg.data) if cfg.data == str(DEFAULT_MANIFEST) else cfg.data
        return model_path, held_out, model, meta, held_out_rows(data, held_out, meta)
    df = read_for_model(cfg.manifest, meta, require_labels=True)
    unlabeled = df.index[df["y"] < 0]
    if len(unlabeled):
        raise ConfigError(
            f"{cfg.manifest}: {len(unlabeled)} row(s) have no label (e.g. data rows "
            f"{df.loc[unlabeled[:5], 'row'].tolist()}); evaluation needs every image labelled — "
            "use `glomlib predict` for unlabelled patches."
        )
    return model_path, held_out, model, meta, df


def _predictions(cfg: EvaluateConfig, model: Any, meta: dict, df: pd.DataFrame) -> pd.DataFrame:
    sizes = sizes_checked(list(df["path"]))
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    images = load_images(list(df["path"]), int(meta["image_size"]), hashes=list(df["sha256"]), **kw)
    members, seen = None, model_input(images, meta)  # resized and stain-normalised once, for the model and the qc
    if is_bundle(meta):  # every member's probability is kept: the members' spread and the biopsy CIs use them
        members = member_probs(model, meta, seen, tta=cfg.tta, batch_size=cfg.batch_size, prepared=True)
        raw = combine_probs(members, meta["combine"])
    else:
        raw = predict(model, meta, seen, batch_size=cfg.batch_size, calibrated=False, tta=cfg.tta, prepared=True)
    prob = apply_calibration(raw, meta.get("calibration"))
    pred = df[["path", "slide", "patient", "center"]].astype({c: str for c in ("slide", "patient", "center")})
    pred = pred.assign(label=df["label"], y=df["y"].astype(int), prob=prob, prob_raw=raw)
    pred = pred.assign(pred=(prob >= float(meta.get("threshold", 0.5))).astype(int))
    if members is not None:
        pred = pred.assign(**{f"prob_member_{i}": members[:, i] for i in range(members.shape[1])})
    return pred.assign(qc=qc_column(sizes, images, meta, seen=seen))


def _caveats(pred: pd.DataFrame, meta: dict, df: pd.DataFrame) -> list[str]:
    """What a reader of the figures must know: labels shared with the calibration, one class only."""
    out = [w for w in (CAL.calibration_overlap(meta, df),) if w]
    n_pos = int(pred["y"].sum())
    if n_pos in (0, len(pred)):
        which = meta["positive_label"] if n_pos else meta.get("negative_label") or "negative"
        out.append(
            f"every evaluated image is labelled {which!r}: AUC, balanced accuracy and "
            f"{'specificity' if n_pos else 'sensitivity'} need both classes and are not defined; accuracy, "
            "the share of positive calls, Brier score and the biopsy-level shares are."
        )
    return out


def _figures(cfg: EvaluateConfig, out: Path, pred: pd.DataFrame, meta: dict, ro: B.BiopsyReadout) -> None:
    import matplotlib.pyplot as plt

    cal = meta.get("calibration")
    probs = {"before calibration": pred["prob_raw"], "calibrated": pred["prob"]} if cal else {"model": pred["prob"]}
    for name, fig in (
        ("reliability", reliability_figure(pred["y"], probs, n_bins=cfg.n_bins)),
        ("bland_altman", B.bland_altman_figure(ro.table, positive_label=str(meta["positive_label"]))),
    ):
        save_figure(fig, out, name)
        plt.close(fig)


def run_evaluate(cfg: EvaluateConfig | None = None, **params: Any) -> EvaluateResult:
    """Evaluate ``cfg.model`` on the labelled ``cfg.manifest`` and write the outputs (package docstring)."""
    cfg = cfg if cfg is not None else EvaluateConfig.from_params(**params)
    model_path, held_out, model, meta, df = _model_and_rows(cfg)
    out = _prepare_out(cfg.out)  # claimed only once model and data are known to be usable
    manifest = cfg.manifest
    if held_out is not None:  # record exactly which rows were evaluated
        manifest = str(out / "manifest.csv")
        write_csv_atomic(df[[c for c in ("path", "label", "slide", "patient", "center") if c in df.columns]], manifest)
    cfg_dict = {**cfg.to_dict(), "out": str(out), "model": str(model_path), "manifest_used": str(manifest)}
    write_json_atomic(out / "config.json", cfg_dict)
    fp = data_fingerprint(df)
    write_provenance(out, cfg_dict, fp, extra={"model_meta": meta, "n_images": int(len(df))})
    pred = _predictions(cfg, model, meta, df)
    doc = evaluate_predictions(pred, meta, by=cfg.by, biopsy_rule=cfg.biopsy_rule, n_boot=cfg.n_boot, seed=cfg.seed)
    doc.update(model=str(model_path), manifest=str(Path(manifest).resolve()), data_fingerprint=fp)
    doc["held_out_slides"] = held_out
    doc.update(qc=qc_summary(pred["qc"]), warnings=_caveats(pred, meta, df))
    thr = float(meta.get("threshold", 0.5))
    per_slide, per_center = per_group_table(pred, "slide", thr), per_group_table(pred, "center", thr)
    ro = B.readouts(pred, threshold=thr, rule=rule_for(meta, cfg.biopsy_rule), by=cfg.by)
    ci = BCI.from_predictions(pred, meta, by=cfg.by, n_boot=cfg.n_boot, seed=cfg.seed)
    doc["biopsy_ci"] = {
        "min_glomeruli": BCI.MIN_GLOMERULI,
        "why": BCI.MIN_WHY,
        "too_few": ci.loc[ci["too_few"], "biopsy"].tolist(),
    }
    if is_bundle(meta):
        cols = [c for c in pred.columns if c.startswith("prob_member_")]
        doc["bundle"] = {**member_spread(pred["y"], pred[cols].to_numpy(), meta), "auc": doc["overall"]["auc"]["value"]}
    write_csv_atomic(ci, out / "biopsy_ci.csv")
    for name, table in (("predictions", pred), ("per_slide", per_slide), ("per_center", per_center)):
        write_csv_atomic(table, out / f"{name}.csv")
    write_csv_atomic(ro.table.reset_index(), out / "biopsy_table.csv")
    write_json_atomic(out / "metrics.json", _clean(doc))
    _figures(cfg, out, pred, meta, ro)
    return EvaluateResult(out, pred, doc, per_slide, per_center, ro, meta)


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
    lines += [f"**Warning:** {w}" for w in m.get("warnings", [])]
    display(Markdown("\n\n".join(lines)))
    return result.table().T


def show_reliability(result: EvaluateResult):
    """Notebook: the reliability diagram written by :func:`run_evaluate`."""
    from IPython.display import Image

    return Image(filename=str(result.out / "figures" / "reliability.png"))


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
    how = {"method": cfg.calibration, "threshold_rule": cfg.threshold_rule, "pool_fraction": cfg.pool_fraction}
    curve = CAL.local_label_curve(pred, cfg.local_sizes, cfg.repeats, **how, seed=cfg.seed, source_threshold=thr0)
    write_csv_atomic(curve, result.out / "local_label_curve.csv")
    return curve


def cli_run(cfg: EvaluateConfig) -> int:
    """``glomlib evaluate``: errors become one message and an exit code in glomlib.cli."""
    res = run_evaluate(cfg)
    print(f"output folder: {res.out}")
    print(f"threshold {res.metrics['threshold']:.3f} ({res.metrics['threshold_rule']})")
    print(qc_line(res.predictions["qc"]))
    for w in res.metrics["warnings"]:
        print(f"WARNING: {w}")
    _print_bundle_and_biopsies(res)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(res.table().T.to_string())
        print(res.biopsy.agreement.round(3).to_string())
        before = res.metrics.get("biopsy_before_calibration")
        if before:
            print("before calibration: " + ", ".join(f"{k} MAE {v['mae']:.3f}" for k, v in before["agreement"].items()))
    return 0


def _print_bundle_and_biopsies(res: EvaluateResult) -> None:
    b, ci = res.metrics.get("bundle"), res.metrics["biopsy_ci"]
    if b:
        s = b["member_auc_spread"]
        print(f"bundle of {len(b['member_auc'])} ({b['combine']}): AUC {b['auc']:.3f}; members' AUC min "
              f"{s['min']:.3f}, median {s['median']:.3f}, max {s['max']:.3f}")  # fmt: skip
    if ci["too_few"]:
        print(f"WARNING: {len(ci['too_few'])} biopsy(ies) with {ci['why']}: {', '.join(ci['too_few'])}")
    print(f"per-biopsy shares with 95 % CIs: {res.out / 'biopsy_ci.csv'}")
