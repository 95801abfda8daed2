"""Quality flags: one row per (image, reason) with the value and the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.review.audit.config import FLAG_COLUMNS, AuditConfig
from glomlib.review.audit.scan import CHANNELS, ImageScan
from glomlib.review.audit.tables import _centre


def robust_z(values: pd.Series, groups: pd.Series, min_group: int = 10) -> pd.Series:
    """(x - median) / (1.4826 * MAD) within each group; groups smaller than ``min_group`` use all images."""
    v = values.astype(float)
    z = pd.Series(np.nan, index=v.index)
    med_all, mad_all = v.median(), (v - v.median()).abs().median()
    for g, idx in v.groupby(groups).groups.items():
        x = v.loc[idx]
        med, mad = (x.median(), (x - x.median()).abs().median()) if len(x) >= min_group else (med_all, mad_all)
        z.loc[idx] = (x - med) / (1.4826 * mad) if mad > 0 else 0.0
    return z


def quality_flags(
    scan: ImageScan, cfg: AuditConfig, duplicates: pd.DataFrame | None = None, mask_area: pd.Series | None = None
) -> pd.DataFrame:
    """One row per (flagged image, reason): unreadable, blur, background, stain_high / stain_low,
    exact_duplicate, near_duplicate, duplicate_across_folds, duplicate_across_splits, label_conflict,
    mask_missing_file, mask_small. Columns: ``FLAG_COLUMNS``."""
    t = scan.table.reset_index(drop=True)
    flags: list[dict[str, Any]] = []

    def add(i: int, reason: str, value: Any, threshold: Any, detail: str = "") -> None:
        flags.append(
            {
                "row": t.at[i, "row"] if "row" in t else i + 1,
                "path": t.at[i, "path"],
                "slide": t.at[i, "slide"] if "slide" in t else "",
                "center": t.at[i, "center"] if "center" in t else "",
                "label": t.at[i, "label"] if "label" in t else "",
                "reason": reason,
                "value": value,
                "threshold": threshold,
                "detail": detail,
            }
        )

    ok = t["error"] == ""
    for i in np.flatnonzero(~ok.to_numpy()):
        add(i, "unreadable", np.nan, "", t.at[i, "error"])
    good = t[ok]
    for i in good.index[good["blur_lapvar"] < cfg.blur_min]:
        add(i, "blur", round(good.at[i, "blur_lapvar"], 1), cfg.blur_min, "variance of Laplacian below threshold")
    for i in good.index[good["background_frac"] > cfg.background_max]:
        add(
            i,
            "background",
            round(good.at[i, "background_frac"], 3),
            cfg.background_max,
            f"share of near-white pixels (all channels >= {cfg.white_level})",
        )
    centres = _centre(good)
    zs = {c: robust_z(good[f"od_{c}"], centres) for c in CHANNELS}
    for i in good.index:
        zc = {c: zs[c].at[i] for c in CHANNELS if np.isfinite(zs[c].at[i])}
        if not zc:
            continue
        c, z = max(zc.items(), key=lambda kv: abs(kv[1]))
        if abs(z) > cfg.stain_z:
            add(
                i,
                "stain_high" if z > 0 else "stain_low",
                round(float(z), 2),
                cfg.stain_z,
                f"tissue OD {c}={good.at[i, f'od_{c}']:.3f}, robust z vs centre {centres.at[i]} "
                f"(median {good.loc[centres == centres.at[i], f'od_{c}'].median():.3f})",
            )
    if duplicates is not None and len(duplicates):
        pos = {p: k for k, p in enumerate(t["path"])}
        for _, r in duplicates.iterrows():
            reason = "exact_duplicate" if r["kind"] == "exact" else "near_duplicate"
            for me, other in (("a", "b"), ("b", "a")):
                i = pos[r[f"path_{me}"]]
                where = f"slide {r.get(f'slide_{other}', '')}, label {r.get(f'label_{other}', '')}"
                add(
                    i,
                    reason,
                    int(r["distance"]),
                    0 if reason == "exact_duplicate" else cfg.near_dup_distance,
                    f"same as {Path(r[f'path_{other}']).name} ({where})",
                )
                if r.get("across_folds", False):
                    add(
                        i,
                        "duplicate_across_folds",
                        int(r["distance"]),
                        "",
                        f"fold {r['fold_' + me]} vs fold {r['fold_' + other]} ({Path(r[f'path_{other}']).name})",
                    )
                if r.get("across_splits", False):
                    add(
                        i,
                        "duplicate_across_splits",
                        int(r["distance"]),
                        "",
                        f"split {r['split_' + me]} vs {r['split_' + other]} ({Path(r[f'path_{other}']).name})",
                    )
                if not r.get("same_label", True):
                    add(
                        i,
                        "label_conflict",
                        int(r["distance"]),
                        "",
                        f"duplicate {Path(r[f'path_{other}']).name} is labelled {r.get(f'label_{other}')}",
                    )
    if mask_area is not None:
        ma = mask_area.reset_index(drop=True)
        for i in ma.index[ma == -1.0]:
            add(i, "mask_missing_file", np.nan, "", f"mask file {t.at[i, 'mask']} could not be read")
        for i in ma.index[(ma >= 0) & (ma < cfg.mask_area_min)]:
            add(
                i,
                "mask_small",
                round(float(ma.at[i]), 4),
                cfg.mask_area_min,
                "empty mask" if ma.at[i] == 0 else "mask covers a small share of the patch",
            )
    res = pd.DataFrame(flags, columns=FLAG_COLUMNS)
    return res.sort_values(["reason", "row"], kind="stable").reset_index(drop=True)


def flag_summary(flags: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """Images flagged per reason (and share of the collection)."""
    s = flags.groupby("reason")["path"].nunique().rename("images").to_frame()
    s.loc["any reason"] = flags["path"].nunique()
    s["share"] = (s["images"] / max(n_images, 1)).round(4)
    return s
