"""Quality flags: one row per (image, reason) with the value and the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from glomlib.review.audit.config import FLAG_COLUMNS, AuditConfig
from glomlib.review.audit.scan import CHANNELS, ImageScan
from glomlib.review.audit.tables import _centre

MAD_SCALE = 1.4826  # MAD x this estimates the SD of a normal distribution (the audit's thresholds assume it)
Flag = tuple[int, str, Any, Any, str]  # (position, reason, value, threshold, detail)


def _median_mad(x: pd.Series) -> tuple[float, float]:
    return float(np.nanmedian(x)), float(median_abs_deviation(x, nan_policy="omit", scale=1 / MAD_SCALE))


def robust_z(values: pd.Series, groups: pd.Series, min_group: int = 10) -> pd.Series:
    """(x - median) / (1.4826 * MAD) within each group; groups smaller than ``min_group`` use all images."""
    v = values.astype(float)
    z = pd.Series(np.nan, index=v.index)
    whole = _median_mad(v)
    for _, idx in v.groupby(groups).groups.items():
        x = v.loc[idx]
        med, mad = _median_mad(x) if len(x) >= min_group else whole
        z.loc[idx] = (x - med) / mad if mad > 0 else 0.0
    return z


def _stain_flags(good: pd.DataFrame, cfg: AuditConfig) -> list[Flag]:
    centres = _centre(good)
    zs = pd.DataFrame({c: robust_z(good[f"od_{c}"], centres) for c in CHANNELS})
    out = []
    for i, row in zs.iterrows():
        zc = row.dropna()
        if not len(zc) or abs(zc[c := zc.abs().idxmax()]) <= cfg.stain_z:
            continue
        med = good.loc[centres == centres.at[i], f"od_{c}"].median()
        detail = f"tissue OD {c}={good.at[i, f'od_{c}']:.3f}, robust z vs centre {centres.at[i]} (median {med:.3f})"
        out.append((i, "stain_high" if zc[c] > 0 else "stain_low", round(float(zc[c]), 2), cfg.stain_z, detail))
    return out


def _pixel_flags(t: pd.DataFrame, cfg: AuditConfig) -> list[Flag]:
    ok = t["error"] == ""
    out: list[Flag] = [(i, "unreadable", np.nan, "", t.at[i, "error"]) for i in np.flatnonzero(~ok.to_numpy())]
    good = t[ok]
    blur, bg = good["blur_lapvar"], good["background_frac"]
    out += [
        (i, "blur", round(v, 1), cfg.blur_min, "variance of Laplacian below threshold")
        for i, v in blur[blur < cfg.blur_min].items()
    ]
    why = f"share of near-white pixels (all channels >= {cfg.white_level})"
    out += [(i, "background", round(v, 3), cfg.background_max, why) for i, v in bg[bg > cfg.background_max].items()]
    return out + _stain_flags(good, cfg)


def _duplicate_flags(t: pd.DataFrame, duplicates: pd.DataFrame, cfg: AuditConfig) -> list[Flag]:
    pos = {p: k for k, p in enumerate(t["path"])}
    out: list[Flag] = []
    for _, r in duplicates.iterrows():
        exact, d = r["kind"] == "exact", int(r["distance"])
        for me, other in (("a", "b"), ("b", "a")):
            i, name = pos[r[f"path_{me}"]], Path(r[f"path_{other}"]).name
            where = f"slide {r.get(f'slide_{other}', '')}, label {r.get(f'label_{other}', '')}"
            reason = "exact_duplicate" if exact else "near_duplicate"
            out.append((i, reason, d, 0 if exact else cfg.near_dup_distance, f"same as {name} ({where})"))
            if r.get("across_folds", False):
                out.append(
                    (
                        i,
                        "duplicate_across_folds",
                        d,
                        "",
                        f"fold {r['fold_' + me]} vs fold {r['fold_' + other]} ({name})",
                    )
                )
            if r.get("across_splits", False):
                out.append(
                    (i, "duplicate_across_splits", d, "", f"split {r['split_' + me]} vs {r['split_' + other]} ({name})")
                )
            if not r.get("same_label", True):
                out.append((i, "label_conflict", d, "", f"duplicate {name} is labelled {r.get(f'label_{other}')}"))
    return out


def _mask_flags(t: pd.DataFrame, area: pd.Series, cfg: AuditConfig) -> list[Flag]:
    ma = area.reset_index(drop=True)
    out: list[Flag] = [
        (i, "mask_missing_file", np.nan, "", f"mask file {t.at[i, 'mask']} could not be read")
        for i in ma.index[ma == -1.0]
    ]
    small = ma[(ma >= 0) & (ma < cfg.mask_area_min)]
    return out + [
        (
            i,
            "mask_small",
            round(float(v), 4),
            cfg.mask_area_min,
            "empty mask" if v == 0 else "mask covers a small share of the patch",
        )
        for i, v in small.items()
    ]


def quality_flags(
    scan: ImageScan, cfg: AuditConfig, duplicates: pd.DataFrame | None = None, mask_area: pd.Series | None = None
) -> pd.DataFrame:
    """One row per (flagged image, reason): unreadable, blur, background, stain_high / stain_low,
    exact_duplicate, near_duplicate, duplicate_across_folds, duplicate_across_splits, label_conflict,
    mask_missing_file, mask_small. Columns: ``FLAG_COLUMNS``."""
    t = scan.table.reset_index(drop=True)
    flags = _pixel_flags(t, cfg)
    flags += _duplicate_flags(t, duplicates, cfg) if duplicates is not None and len(duplicates) else []
    flags += _mask_flags(t, mask_area, cfg) if mask_area is not None else []
    where = {c: (lambda i, c=c: t.at[i, c] if c in t else "") for c in ("slide", "center", "label")}
    recs = [
        {"row": t.at[i, "row"] if "row" in t else i + 1, "path": t.at[i, "path"], **{c: f(i) for c, f in where.items()}}
        | {"reason": reason, "value": value, "threshold": thr, "detail": detail}
        for i, reason, value, thr, detail in flags
    ]
    res = pd.DataFrame(recs, columns=FLAG_COLUMNS)
    return res.sort_values(["reason", "row"], kind="stable").reset_index(drop=True)


def flag_summary(flags: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """Images flagged per reason (and share of the collection)."""
    s = flags.groupby("reason")["path"].nunique().rename("images").to_frame()
    s.loc["any reason"] = flags["path"].nunique()
    s["share"] = (s["images"] / max(n_images, 1)).round(4)
    return s
