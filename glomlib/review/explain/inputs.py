"""Notebook 05's inputs and tables: the run, its out-of-fold predictions, error rates, written outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from glomlib.core import io
from glomlib.core.config import ConfigError, StepConfig
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.core.runs import resolve_run
from glomlib.data.manifest import read_manifest
from glomlib.data.public import ensure_default_manifest

OUTCOMES = ("TP", "TN", "FP", "FN")


@dataclasses.dataclass(frozen=True)
class ExplainConfig(StepConfig):
    """Parameters of notebook 05 (names == the notebook's ``parameters`` cell)."""

    run: str = "latest"  # fine-tune run folder (predictions.csv + fold models); "latest" = newest under runs/
    data: str = str(DEFAULT_MANIFEST)  # manifest, for glomerulus masks (may lack masks)
    out: str = "auto"  # output folder; "auto" = runs/<stamp>-errors
    label_fraction: float = 1.0  # which label fraction's predictions to analyse (nearest available)
    threshold: float = 0.5  # probability at or above which an image is called positive
    n_gallery: int = 16  # images per error gallery (false positives, false negatives)
    n_gradcam: int = 8  # errors (per kind) shown with Grad-CAM
    k_neighbours: int = 5  # nearest labelled neighbours shown for each error
    n_neighbour_rows: int = 8  # errors shown with their neighbours
    embedding: Literal["umap", "tsne"] = "umap"  # "umap" or "tsne"
    interactive: bool = True  # widget browser in a live kernel; papermill / HTML always get the static gallery
    batch_size: int = 32  # images per forward pass
    seed: int = 0  # seed for the embedding map

    def validate(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold={self.threshold}: must be in (0, 1).")
        if self.k_neighbours < 1 or self.n_gallery < 1:
            raise ConfigError("k_neighbours and n_gallery must be at least 1.")


def chosen_fraction(fractions: Sequence[float], label_fraction: float) -> float:
    """The available label fraction nearest to ``label_fraction``."""
    fr = np.unique(np.asarray(fractions, dtype=float))
    return float(fr[np.argmin(np.abs(fr - float(label_fraction)))])


def load_predictions(run_dir: str | Path, label_fraction: float = 1.0, threshold: float = 0.5) -> pd.DataFrame:
    """One row per image: path, slide, center, label, y, prob (mean over seeds), pred, outcome, error, and
    ``confidence``, the model's confidence in its own call (prob for a positive call, 1-prob for a negative one)."""
    p = pd.read_csv(Path(run_dir) / "predictions.csv", keep_default_na=False)
    need = {"path", "y", "prob"}
    if not need <= set(p.columns):
        raise ValueError(
            f"{Path(run_dir) / 'predictions.csv'} lacks columns {sorted(need - set(p.columns))}; "
            "expected the fine-tune output format (path, slide, center, label, y, prob, pred, fold, ...)."
        )
    if "label_fraction" in p.columns and len(p):
        lf = p["label_fraction"].astype(float)
        p = p[lf == chosen_fraction(lf.unique(), label_fraction)]
    p = p[p["y"].astype(int) >= 0]
    agg: dict[str, Any] = {c: "first" for c in ("slide", "center", "label", "fold") if c in p.columns}
    agg.update(prob="mean")
    g = p.groupby("path", sort=False).agg(agg)
    g["y"] = p.groupby("path", sort=False)["y"].first().astype(int)
    g["n_seeds"] = p.groupby("path", sort=False)["prob"].size()
    g = g.reset_index()
    for c in ("slide", "center", "label"):
        if c not in g:
            g[c] = ""
    g["pred"] = (g["prob"] >= threshold).astype(int)
    g["outcome"] = np.select(
        [(g.y == 1) & (g.pred == 1), (g.y == 0) & (g.pred == 0), (g.y == 0) & (g.pred == 1)], ["TP", "TN", "FP"], "FN"
    )
    g["confidence"] = np.where(g["pred"] == 1, g["prob"], 1 - g["prob"])
    g["error"] = g["outcome"].isin(["FP", "FN"])
    return g


def attach_masks(pred: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.DataFrame:
    """Add the manifest's ``mask`` column (joined on path; "" where unknown)."""
    pred = pred.copy()
    if manifest is None or "mask" not in manifest:
        pred["mask"] = ""
        return pred
    m = dict(zip(manifest["path"].astype(str), manifest["mask"].astype(str)))
    pred["mask"] = [m.get(str(p), "") for p in pred["path"]]
    return pred


def prepare(cfg: ExplainConfig):
    """``(pred, run_dir, out_dir)``: the run, its predictions (+ masks from the manifest when readable), ``out``."""
    run_dir = resolve_run(cfg.run)
    pred = load_predictions(run_dir, cfg.label_fraction, cfg.threshold)
    manifest = None
    data = Path(cfg.data)
    if not data.exists() and cfg.data == str(DEFAULT_MANIFEST):
        try:
            ensure_default_manifest(data)
        except Exception as e:  # masks are optional: say so, carry on
            print(f"No manifest for masks ({e}); Grad-CAM shown without mask outlines.")
    if data.exists():
        pos = pred.loc[pred["y"] == 1, "label"]
        positive = str(pos.iloc[0]) if len(pos) and str(pos.iloc[0]) else ""  # "": dataset.json names it
        try:
            manifest = read_manifest(data, positive_label=positive, require_labels=False)
        except Exception as e:  # masks are optional: say so, carry on
            print(f"Manifest {data} not usable for masks ({type(e).__name__}: {str(e)[:300]}); no mask outlines.")
    pred = attach_masks(pred, manifest)
    out = Path(io.new_run_dir("runs", "errors") if cfg.out == "auto" else io.ensure_new_dir(cfg.out))
    cfg.save(out / "config.json")
    io.write_provenance(out, cfg, extra={"finetune_run": str(Path(run_dir).resolve())})
    return pred, Path(run_dir), out


def error_rates(pred: pd.DataFrame, by: str = "center") -> pd.DataFrame:
    """Per group: images, positives, errors, error rate, false positives and false negatives (worst first)."""
    g = pred.groupby(by)
    res = g.agg(images=("y", "size"), positives=("y", "sum"), errors=("error", "sum"))
    res["FP"], res["FN"] = (g["outcome"].apply(lambda s, k=k: int((s == k).sum())) for k in ("FP", "FN"))
    res["error_rate"] = (res["errors"] / res["images"]).round(3)
    return res.sort_values(["error_rate", "images"], ascending=[False, False])


def ranked_errors(pred: pd.DataFrame, kind: str, n: int | None = None) -> pd.DataFrame:
    """False positives (``kind="FP"``) or negatives (``"FN"``), most confident first."""
    e = pred[pred["outcome"] == kind].sort_values("confidence", ascending=False)
    return e if n is None else e.head(n)


def write_outputs(out: str | Path, pred: pd.DataFrame, gradcam_rows=None, neighbours=None) -> dict[str, Path]:
    """``errors.csv`` (every misclassified image with outcome, prob, confidence, mask share when computed),
    ``error_rates_by_center.csv``, ``error_rates_by_slide.csv`` and ``neighbours.csv``."""
    out = Path(out)
    e = pred[pred["error"]].sort_values("confidence", ascending=False)
    if gradcam_rows is not None and len(gradcam_rows):
        cols = [c for c in ("path", "mask_share", "mask_area", "mask_enrichment") if c in gradcam_rows]
        e = e.merge(gradcam_rows[cols], on="path", how="left")
    names = {"errors": "errors.csv", "by_center": "error_rates_by_center.csv", "by_slide": "error_rates_by_slide.csv"}
    paths = {k: out / v for k, v in names.items()}
    e.to_csv(paths["errors"], index=False)
    error_rates(pred, "center").to_csv(paths["by_center"])
    error_rates(pred, "slide").to_csv(paths["by_slide"])
    if neighbours is not None:
        paths["neighbours"] = out / "neighbours.csv"
        neighbours.to_csv(paths["neighbours"], index=False)
    return paths


def neighbour_table(pred: pd.DataFrame, nn_idx: np.ndarray, errors: Sequence[int]) -> pd.DataFrame:
    """For each error: its nearest neighbours' (``nn_idx``) paths, labels and whether they share its true label."""
    nn_idx = np.asarray(nn_idx, int).reshape(len(errors), -1)
    recs = []
    for row, e in zip(nn_idx, errors):
        for rank, j in enumerate(row, 1):
            recs.append(
                {
                    "error_path": pred["path"].iloc[e],
                    "outcome": pred["outcome"].iloc[e],
                    "rank": rank,
                    "neighbour_path": pred["path"].iloc[j],
                    "neighbour_label": pred["label"].iloc[j],
                    "neighbour_y": int(pred["y"].iloc[j]),
                    "same_true_label": bool(pred["y"].iloc[j] == pred["y"].iloc[e]),
                }
            )
    return pd.DataFrame(recs)


def error_indices(pred: pd.DataFrame, n: int) -> list[int]:
    """Positions (in ``pred``) of up to ``n`` errors, most confident first, alternating FP and FN."""
    fp = [pred.index.get_loc(i) for i in ranked_errors(pred, "FP").index]
    fn = [pred.index.get_loc(i) for i in ranked_errors(pred, "FN").index]
    out: list[int] = []
    while (fp or fn) and len(out) < n:
        for lst in (fp, fn):
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def class_names(meta: dict[str, Any] | None, pred: pd.DataFrame) -> tuple[str, str]:
    """(positive, negative) class names from the model meta or the predictions."""
    if meta and meta.get("positive_label"):
        return str(meta["positive_label"]), str(meta.get("negative_label") or "negative")
    pos = pred.loc[pred["y"] == 1, "label"]
    neg = pred.loc[pred["y"] == 0, "label"]
    return (str(pos.iloc[0]) if len(pos) else "positive", str(neg.iloc[0]) if len(neg) else "negative")
