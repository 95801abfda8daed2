"""Count, format and stain tables, the summary and the written outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core.io import write_json_atomic
from glomlib.review.audit.scan import CHANNELS, ImageScan


def _centre(df: pd.DataFrame) -> pd.Series:
    c = df["center"].astype(str) if "center" in df.columns else pd.Series("", index=df.index)
    return c.where(c != "", "(no centre)")


def _label(df: pd.DataFrame) -> pd.Series:
    lab = df["label"].astype(str)
    return lab.where(lab != "", "(unlabeled)")


def counts(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Count tables: ``by_center`` and ``by_slide`` (rows = group, columns = class, plus total)."""
    d = df.assign(center=_centre(df), label=_label(df))
    out = {}
    for key in ("center", "slide"):
        t = pd.crosstab(d[key], d["label"])
        t.columns.name = "class"
        t["total"] = t.sum(axis=1)
        out[f"by_{key}"] = t
    slides = d.groupby("center")["slide"].nunique().rename("slides")
    out["by_center"] = out["by_center"].join(slides)
    return out


def cohort(df: pd.DataFrame, patients: bool = True) -> pd.DataFrame:
    """Per centre, then all centres: slides, patients (None when ``patients`` is False: not recorded), positive
    (``y`` 1) and negative (``y`` 0) glomeruli, all glomeruli and the share positive among the labelled."""
    d = df.assign(center=_centre(df))
    recs = []
    for name, g in [*d.groupby("center"), ("All centres", d)]:
        pos, neg = int((g["y"] == 1).sum()), int((g["y"] == 0).sum())
        recs.append(
            {"center": name, "slides": int(g["slide"].nunique()), "positive": pos, "negative": neg}
            | {"patients": int(g["patient"].nunique()) if patients and "patient" in g else None, "glomeruli": len(g)}
            | {"share_positive": pos / (pos + neg) if pos + neg else None}
        )
    return pd.DataFrame(recs)


def class_confounders(table: pd.DataFrame, flags: pd.DataFrame) -> dict[str, Any]:
    """What differs by class besides the lesion, so a model could use it: median sharpness (variance of the
    Laplacian) and tissue OD per class, overall and per centre, and the blur flags per class and centre."""
    t = table[table["error"] == ""].assign(center=_centre(table), label=_label(table))
    per = lambda col, by: {str(k): float(v) for k, v in t.groupby(by)[col].median().items()}  # noqa: E731
    sharp_c = t.pivot_table(index="center", columns="label", values="blur_lapvar", aggfunc="median")
    blur = flags[flags["reason"] == "blur"].drop_duplicates("path").assign(center=_centre, label=_label)
    return {
        "sharpness_per_class": per("blur_lapvar", "label"),
        "sharpness_per_centre": {
            str(c): {str(k): float(v) for k, v in r.dropna().items()} for c, r in sharp_c.iterrows()
        },
        "od_per_class": per("od_total", "label"),
        "blur_flags": [
            {"label": str(k[0]), "center": str(k[1]), "images": int(v)}
            for k, v in blur.groupby(["label", "center"]).size().items()
        ],
    }


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """How many images have each (width, height, mode, format); unreadable files listed as such."""
    t = table.copy()
    bad = t["error"] != ""
    for c in ("width", "height", "mode", "format"):
        if c not in t.columns:
            t[c] = np.nan
    t.loc[bad, "format"] = "UNREADABLE"
    g = t.fillna({"width": -1, "height": -1, "mode": "?"}).groupby(["width", "height", "mode", "format"], dropna=False)
    res = g.size().rename("images").reset_index()
    res["file_kB_median"] = g["file_bytes"].median().to_numpy() / 1024 if "file_bytes" in t else np.nan
    return res


def stain_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per centre: median RGB means, median tissue OD per channel, background share and blur (median)."""
    t = table[table["error"] == ""].assign(center=_centre(table))
    cols = (
        [f"mean_{c}" for c in CHANNELS] + [f"od_{c}" for c in CHANNELS] + ["od_total", "background_frac", "blur_lapvar"]
    )
    res = t.groupby("center")[cols].median()
    res.insert(0, "images", t.groupby("center").size())
    return res.round(3)


def od_histograms(scan: ImageScan, by: str = "center") -> dict[str, np.ndarray]:
    """Normalised OD histograms of tissue pixels per group: {group: (3, bins)}, each channel sums to 1."""
    groups = _centre(scan.table) if by == "center" else scan.table[by].astype(str)
    out = {}
    for g in sorted(groups.unique()):
        h = scan.od_hist[(groups == g).to_numpy()].sum(axis=0).astype(float)
        out[g] = h / np.maximum(h.sum(axis=1, keepdims=True), 1)
    return out


def write_outputs(
    out: str | Path,
    scan: ImageScan,
    flags: pd.DataFrame,
    duplicates: pd.DataFrame,
    summary: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``flags.csv``, ``image_stats.csv``, ``duplicates.csv`` and ``audit_summary.json`` into ``out``."""
    out = Path(out)
    paths = {"flags": out / "flags.csv", "image_stats": out / "image_stats.csv", "duplicates": out / "duplicates.csv"}
    flags.to_csv(paths["flags"], index=False)
    scan.table.to_csv(paths["image_stats"], index=False)
    duplicates.to_csv(paths["duplicates"], index=False)
    if summary is not None:
        paths["summary"] = write_json_atomic(out / "audit_summary.json", summary)
    return paths


def summarise(
    df: pd.DataFrame, scan: ImageScan, flags: pd.DataFrame, duplicates: pd.DataFrame, area: pd.Series | None = None
) -> dict[str, Any]:
    """Key numbers of the audit as a JSON-ready dict."""
    s: dict[str, Any] = {
        "images": int(len(df)),
        "slides": int(df["slide"].nunique()),
        "centres": sorted(map(str, _centre(df).unique())),
        "classes": {str(k): int(v) for k, v in _label(df).value_counts().items()},
        "unreadable": int((scan.table["error"] != "").sum()),
        "flagged_images": int(flags["path"].nunique()),
        "flags_per_reason": {str(k): int(v) for k, v in flags.groupby("reason")["path"].nunique().items()},
        "duplicate_pairs": {str(k): int(v) for k, v in duplicates["kind"].value_counts().items()}
        if len(duplicates)
        else {},
        "duplicate_pairs_across_folds": int(duplicates["across_folds"].sum()) if len(duplicates) else 0,
        "stain_per_centre": stain_summary(scan.table)[["images", "od_R", "od_G", "od_B", "od_total"]].to_dict(
            orient="index"
        ),
    }
    s["cohort"] = cohort(df).to_dict(orient="records")
    s["confounders"] = class_confounders(scan.table, flags)
    if area is not None and area.notna().any():
        a = area[area >= 0]
        s["mask_area_median"] = float(a.median())
        s["mask_area_median_per_class"] = {str(k): float(v) for k, v in a.groupby(_label(df)).median().items()}
    return s
