"""Predictions back to QuPath: one importable FeatureCollection per slide and a per-biopsy table beside them.

Each feature is the original outline (as extracted, repaired when it was invalid) with a fresh UUID ``id`` (the
source id kept in ``properties.source_id``), ``objectType`` (annotation, or detection), ``classification``
``{name, color}`` by predicted class and numeric ``measurements``: ``probability``, or ``calibrated
probability`` when the model is calibrated (both when the predictions carry ``prob_raw``), ``low confidence``
(1 when the probability is within ``margin`` of the threshold) and ``qc flag`` (a predictions column ``qc``).
The biopsy table (``biopsies.csv``) counts glomeruli and predicted positives per biopsy (the slides CSV's
``biopsy``, else the slide) with the biopsy rule of ``glomlib evaluate``: %GS bands (<=10 / 10-20 / >20 %) when
the positive label is GS, else Oxford M (M1 when more than half are positive); ``review.csv`` lists the
low-confidence glomeruli a pathologist should look at first.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.core.io import write_csv_atomic, write_text_atomic
from glomlib.data.manifest import read_dataset_info
from glomlib.slides.extract import safe_name
from glomlib.slides.read import SlideError

OBJECT_TYPES = ("annotation", "detection")
POSITIVE_COLOR, NEGATIVE_COLOR, OTHER_COLOR = [200, 30, 30], [40, 160, 60], [128, 128, 128]
GS_CUTS = (0.1, 0.2)


def biopsy_call(share: float, positive_label: str) -> str:
    """The biopsy call of ``glomlib evaluate``'s ``auto`` rule for a share of positive glomeruli."""
    if str(positive_label).strip().upper() == "GS":
        return "≤10%" if share <= GS_CUTS[0] else "10%–20%" if share <= GS_CUTS[1] else ">20%"
    return "M1" if share > 0.5 else "M0"


def joined(predictions: str | os.PathLike, manifest: str | os.PathLike) -> pd.DataFrame:
    """Predictions joined to the slides manifest on the crop path (every prediction must match a crop)."""
    pred = pd.read_csv(predictions, keep_default_na=False)
    need = {"path", "prob", "pred_label"} - set(pred.columns)
    if need:
        raise SlideError(f"predictions {predictions} lack column(s) {sorted(need)} (write them with glomlib predict)")
    mpath = Path(manifest).expanduser().resolve()
    man = pd.read_csv(mpath, dtype=str, keep_default_na=False)
    if "annotation_id" not in man.columns:
        raise SlideError(f"{mpath} is not a slides manifest (no annotation_id column; made by glomlib slides extract)")
    man["_key"] = [str((mpath.parent / p).resolve()) for p in man["path"]]
    pred["_key"] = [str(Path(p).expanduser().resolve()) for p in pred["path"]]
    pred = pred.drop(columns=[c for c in ("slide", "label") if c in pred.columns])
    df = pred.merge(man.drop(columns=["path"]), on="_key", how="left", validate="one_to_one")
    lost = df["annotation_id"].isna()
    if lost.any():
        raise SlideError(
            f"{int(lost.sum())} prediction(s) are not crops of {mpath}, e.g. {df.loc[lost, 'path'].iloc[0]}"
        )
    return df


def _measurements(r: pd.Series, threshold: float, margin: float, calibrated: bool) -> dict[str, float]:
    prob = float(r["prob"])
    if "prob_raw" in r:
        m = {"probability": float(r["prob_raw"]), "calibrated probability": prob}
    else:  # glomlib predict writes the calibrated probability as ``prob`` when the model carries a calibration
        m = {"calibrated probability" if calibrated else "probability": prob}
    m["low confidence"] = float(abs(prob - threshold) < margin)
    if "qc" in r and str(r["qc"]) != "":
        m["qc flag"] = float(r["qc"] in (True, 1, "1", "True", "true")) if not _num(r["qc"]) else float(r["qc"])
    return m


def _num(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def slide_features(
    df: pd.DataFrame,
    geometries: dict[str, dict],
    positive: str,
    object_type: str,
    threshold: float,
    margin: float,
    calibrated: bool = False,
) -> list[dict]:
    """QuPath Features for one slide's predictions; ``geometries`` maps source id -> GeoJSON geometry."""
    feats = []
    for _, r in df.iterrows():
        name = str(r["pred_label"])
        color = POSITIVE_COLOR if name == positive else NEGATIVE_COLOR if name else OTHER_COLOR
        feats.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": geometries[str(r["annotation_id"])],
                "properties": {
                    "objectType": object_type,
                    "name": str(r["annotation_id"]),
                    "classification": {"name": name, "color": color},
                    "measurements": _measurements(r, threshold, margin, calibrated),
                    "isLocked": False,
                    "source_id": str(r["annotation_id"]),
                },
            }
        )
    return feats


def _geometries(mdir: Path, slide: str) -> dict[str, dict]:
    p = mdir / "outlines" / f"{safe_name(slide)}.geojson"
    if not p.is_file():
        raise SlideError(f"slide {slide}: outlines {p} are missing (written by glomlib slides extract)")
    return {str(f["id"]): f["geometry"] for f in json.loads(p.read_text())["features"]}


def biopsy_table(df: pd.DataFrame, positive: str, low: pd.Series) -> pd.DataFrame:
    by = df["biopsy"].where(df["biopsy"].astype(str) != "", df["slide"]) if "biopsy" in df.columns else df["slide"]
    d = pd.DataFrame(
        {
            "biopsy": by.astype(str),
            "slide": df["slide"],
            "pos": df["pred_label"] == positive,
            "prob": df["prob"].astype(float),
            "low": low,
            "id": df["annotation_id"],
        }
    )
    rows = []
    for b, g in d.groupby("biopsy", sort=True):
        share = float(g["pos"].mean())
        rows.append(
            {
                "biopsy": b,
                "slides": ";".join(sorted(set(g["slide"]))),
                "glomeruli": len(g),
                "predicted_positive": int(g["pos"].sum()),
                "percent_positive": round(100 * share, 2),
                "mean_probability": round(float(g["prob"].mean()), 4),
                "call": biopsy_call(share, positive),
                "low_confidence": int(g["low"].sum()),
                "to_review": ";".join(g.loc[g["low"], "id"]),
            }
        )
    return pd.DataFrame(rows)


def model_settings(model: str | os.PathLike) -> dict:
    """``threshold``, ``positive_label`` and ``calibrated`` from a fine-tuned model.safetensors' metadata."""
    from glomlib.models.files import read_model_meta  # torch is imported only when a model is named

    meta = read_model_meta(model)
    return {
        "threshold": float(meta.get("threshold", 0.5)),
        "positive_label": str(meta["positive_label"]),
        "calibrated": bool(meta.get("calibration")),
    }


def _positive_label(df: pd.DataFrame, manifest: Path, positive_label: str) -> str:
    if positive_label:
        return positive_label
    named = str(read_dataset_info(manifest).get("positive_label") or "")
    return named or str(df.loc[df["prob"].astype(float).idxmax(), "pred_label"])


def export_predictions(
    predictions: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    object_type: str = "annotation",
    threshold: float = 0.5,
    margin: float = 0.1,
    positive_label: str = "",
    calibrated: bool = False,
) -> list[Path]:
    """Write ``out/<slide>.geojson`` per slide, ``out/biopsies.csv`` and ``out/review.csv``; return the paths.
    ``calibrated``: the ``prob`` column is a calibrated probability (see :func:`model_settings`)."""
    if object_type not in OBJECT_TYPES:
        raise SlideError(f"object type {object_type!r}: use one of {', '.join(OBJECT_TYPES)}")
    mpath = Path(manifest).expanduser().resolve()
    out = Path(out)
    df = joined(predictions, mpath)
    pos = _positive_label(df, mpath, positive_label)
    low = (df["prob"].astype(float) - threshold).abs() < margin
    written = []
    for slide, g in df.groupby("slide", sort=True):
        feats = slide_features(g, _geometries(mpath.parent, slide), pos, object_type, threshold, margin, calibrated)
        doc = {"type": "FeatureCollection", "features": feats}
        written.append(
            write_text_atomic(out / f"{safe_name(slide)}.geojson", json.dumps(doc, separators=(",", ":")) + "\n")
        )
    written.append(write_csv_atomic(biopsy_table(df, pos, low), out / "biopsies.csv"))
    review = df.loc[low, ["slide", "annotation_id", "prob", "pred_label", "path"]].copy()
    review["distance_to_threshold"] = np.round((review["prob"].astype(float) - threshold).abs(), 4)
    written.append(write_csv_atomic(review.sort_values("distance_to_threshold"), out / "review.csv"))
    return written
