"""Data audit (notebook 01): is the patch collection clean, balanced and consistent across centres?

The audit reads every image once (:func:`scan_images`) and derives from that one pass:

- counts per class, slide and centre (:func:`counts`),
- image size / mode / format (:func:`format_table`),
- colour and stain statistics per centre: RGB channel means and optical density (OD = -log10(I/255)) of the
  tissue pixels, OD histograms per channel (:func:`stain_summary`, :func:`od_histograms`),
- exact duplicates (identical file bytes, sha256) and near-duplicates (perceptual hash within a Hamming
  distance, optionally also between rotated/flipped copies), and which of them straddle folds or splits
  (:func:`find_duplicates`),
- quality flags with thresholds as parameters: blur (variance of the Laplacian), mostly background (share of
  near-white pixels), extreme stain (OD far from the centre's median, robust z-score), mask problems
  (:func:`quality_flags`),
- glomerulus area (share of the patch inside the mask) when masks exist (:func:`mask_areas`).

Every flagged image is one row per reason in ``<out>/flags.csv`` (:func:`write_outputs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core.config import ConfigError, StepConfig
from glomlib.data.manifest import read_dataset_info

FLAG_COLUMNS = ["row", "path", "slide", "center", "label", "reason", "value", "threshold", "detail"]
OD_BINS = np.linspace(0.0, 1.5, 31)  # OD histogram bin edges (values above 1.5 land in the last bin)
CHANNELS = ("R", "G", "B")
# 8 dihedral transforms (identity, rotations, flips) used for rotation/flip-aware near-duplicate search
_DIHEDRAL = [None, 2, 3, 4, 0, 1, 5, 6]  # PIL.Image.Transpose values; None = identity


@dataclasses.dataclass
class AuditConfig(StepConfig):
    """Parameters of notebook 01 (names == the notebook's ``parameters`` cell)."""

    data: str = "data/glomeruli-pas/manifest.csv"  # manifest CSV
    out: str = "auto"  # output folder; "auto" = runs/<stamp>-audit
    positive_label: str = ""  # the positive class label ("" = the one the manifest's dataset.json names)
    stats_size: int = 224  # images are resized to this square size before blur / colour statistics
    white_level: int = 215  # a pixel is background when all three channels are >= this (0-255)
    background_max: float = 0.5  # flag an image when more than this share of its pixels is background
    blur_min: float = 50.0  # flag an image when the variance of its Laplacian (grey, stats_size) is below this
    stain_z: float = 4.0  # flag an image when its tissue OD (any channel) is > stain_z robust SDs from its centre
    near_dup_distance: int = 8  # perceptual-hash Hamming distance (of 64 bits) at or below which images are near-duplicates
    rotated_dup_distance: int = 4  # same, between an image and rotated/flipped copies of another; -1 = skip rotations
    mask_area_min: float = 0.05  # flag a mask covering less than this share of its patch (includes empty masks)
    folds: int = 5  # folds used to check duplicates across folds (same grouping as fine-tuning)
    montage_n: int = 8  # example images per class / centre in the montages
    seed: int = 0  # sampling seed for montages and folds

    def validate(self) -> None:
        if not 0 < self.background_max <= 1:
            raise ConfigError(f"background_max={self.background_max}: must be in (0, 1].")
        if not 0 <= self.white_level <= 255:
            raise ConfigError(f"white_level={self.white_level}: must be in 0..255.")
        if not 0 <= self.near_dup_distance <= 64:
            raise ConfigError(f"near_dup_distance={self.near_dup_distance}: must be in 0..64 (64-bit hash).")
        if not -1 <= self.rotated_dup_distance <= 64:
            raise ConfigError(f"rotated_dup_distance={self.rotated_dup_distance}: must be in -1..64 (-1 = off).")
        if self.stats_size < 16:
            raise ConfigError(f"stats_size={self.stats_size}: use at least 16 pixels.")
        if self.stain_z <= 0 or self.blur_min < 0:
            raise ConfigError("stain_z must be > 0 and blur_min >= 0.")


# ----------------------------------------------------------------------------------------------- set-up

def prepare(cfg: AuditConfig):
    """Read the manifest (building the default one from the shared mirror if needed) and create ``out``.

    Returns ``(df, out_dir)``. The audit must run on flawed manifests too, so rows the manifest reader
    rejects are not fatal: they are listed in ``<out>/manifest_skipped.csv`` (and become flags via
    :func:`manifest_flags`), except exact byte-duplicates, which are kept so the duplicate analysis shows
    them (with their folds). The config and provenance are written into ``out_dir``.
    """
    from glomlib.core import io as runs
    from glomlib.data.manifest import data_fingerprint, read_manifest

    data = Path(cfg.data)
    if not data.exists() and cfg.data == AuditConfig.data:
        from glomlib.data.public import ensure_default_manifest

        ensure_default_manifest(data)
    if not data.exists():
        raise FileNotFoundError(f"data={cfg.data!r}: manifest {data.resolve()} does not exist. Pass the path of a "
                                "manifest CSV (glomlib data from-folder builds one from a folder of images).")
    positive = _audit_positive_label(data, cfg.positive_label)
    out = Path(runs.new_run_dir("runs", "audit") if cfg.out == "auto" else runs.ensure_new_dir(cfg.out))
    skipped_csv = out / "manifest_skipped.csv"
    df = read_manifest(data, positive_label=positive, require_labels=False, on_error="skip",
                       skipped_out=skipped_csv)
    df = _readd_content_duplicates(df, data, positive, skipped_csv)
    cfg.save(out / "config.json")
    runs.write_provenance(out, cfg, data_fingerprint(df))
    return df, out


def _audit_positive_label(manifest: Path, positive_label: str) -> str:
    """The audit uses the positive label only to stratify folds (symmetric in the two classes), so a
    ``positive_label`` absent from the manifest (or none given and no ``dataset.json`` naming one) is not
    fatal here: the rarer label stands in, and the notebook says so."""
    if not positive_label:
        positive_label = str(read_dataset_info(manifest).get("positive_label") or "")
    try:
        labels = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["label"])["label"].str.strip()
    except (ValueError, KeyError):
        return positive_label  # no label column: read_manifest reports what is wrong
    counts = labels[labels != ""].value_counts()
    if len(counts) == 0 or positive_label in counts.index:
        return positive_label
    chosen = str(counts.index[-1])
    print(f"positive_label={positive_label!r} occurs in no row of {manifest} (labels: {dict(counts)}); the audit "
          f"uses {chosen!r} as the positive class (it only affects how folds are stratified). "
          "Pass positive_label=... to choose.")
    return chosen


def _readd_content_duplicates(df: pd.DataFrame, manifest: Path, positive_label: str, skipped_csv: Path) -> pd.DataFrame:
    """Put back rows the reader skipped only because their bytes equal another row's (the audit reports them)."""
    if not skipped_csv.exists():
        return df
    sk = pd.read_csv(skipped_csv, dtype=str, keep_default_na=False)
    dup_rows = {int(r) for r, why in zip(sk["row"], sk["reason"])
                if all(part.strip().startswith("duplicate-content") for part in why.split(" | "))}
    if not dup_rows:
        return df
    from glomlib.data.manifest import validate_manifest

    full, _ = validate_manifest(manifest, positive_label=positive_label, require_labels=False)
    add = full[full["row"].isin(dup_rows)].copy()
    add["y"] = [1 if lab == positive_label else (-1 if lab == "" else 0) for lab in add["label"]]
    out = pd.concat([df, add[[c for c in df.columns if c in add.columns]]], ignore_index=True)
    out = out.sort_values("row").reset_index(drop=True)
    out.attrs.update(df.attrs)
    return out


def manifest_flags(out: str | Path, df: pd.DataFrame) -> pd.DataFrame:
    """Rows the manifest reader rejected (from ``<out>/manifest_skipped.csv``) as flags (reason ``manifest``)."""
    p = Path(out) / "manifest_skipped.csv"
    if not p.exists():
        return pd.DataFrame(columns=FLAG_COLUMNS)
    sk = pd.read_csv(p, dtype=str, keep_default_na=False)
    recs = [{"row": int(r["row"]), "path": r["path"], "slide": r["slide"], "center": "", "label": r["label"],
             "reason": "manifest", "value": np.nan, "threshold": "", "detail": r["reason"]} for _, r in sk.iterrows()]
    return pd.DataFrame(recs, columns=FLAG_COLUMNS)


# ----------------------------------------------------------------------------------------------- scanning

@dataclasses.dataclass
class ImageScan:
    """What one pass over the images yields.

    ``table``: one row per manifest row (same order) with file and pixel statistics;
    ``od_hist``: (N, 3, len(OD_BINS)-1) per-image OD histograms of tissue pixels (counts);
    ``phash``: (N, 8, 64) bool perceptual-hash bits of the 8 rotations/flips (index 0 = as stored).
    """

    table: pd.DataFrame
    od_hist: np.ndarray
    phash: np.ndarray


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD = -log10((I + 1) / 256) per channel, float32, same shape as ``rgb`` (uint8)."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a grey uint8 image: low = blurred / featureless."""
    import cv2

    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _phash_bits(img, dihedral: bool) -> np.ndarray:
    import imagehash
    from PIL import Image

    bits = np.zeros((8, 64), bool)
    for i, t in enumerate(_DIHEDRAL if dihedral else [None]):
        im = img if t is None else img.transpose(Image.Transpose(t))
        bits[i] = imagehash.phash(im, hash_size=8).hash.ravel()
    if not dihedral:
        bits[1:] = bits[0]
    return bits


def image_stats(rgb: np.ndarray, white_level: int = 215) -> dict[str, float]:
    """Colour, stain, background and sharpness statistics of one RGB uint8 image (already resized)."""
    import cv2

    background = np.all(rgb >= white_level, axis=-1)
    od = optical_density(rgb)
    tissue = ~background & (od.max(axis=-1) > 0.15)
    rec: dict[str, float] = {"background_frac": float(background.mean()), "tissue_frac": float(tissue.mean())}
    for c, name in enumerate(CHANNELS):
        rec[f"mean_{name}"] = float(rgb[..., c].mean())
        rec[f"std_{name}"] = float(rgb[..., c].std())
        rec[f"od_{name}"] = float(od[..., c][tissue].mean()) if tissue.any() else float("nan")
    rec["od_total"] = float(np.nansum([rec[f"od_{n}"] for n in CHANNELS])) if tissue.any() else float("nan")
    rec["blur_lapvar"] = laplacian_variance(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return rec


def scan_images(df: pd.DataFrame, cfg: AuditConfig | None = None) -> ImageScan:
    """Read every image of ``df`` once; unreadable files get ``error`` set instead of failing the audit."""
    from PIL import Image

    cfg = cfg or AuditConfig()
    n = len(df)
    od_hist = np.zeros((n, 3, len(OD_BINS) - 1), np.int64)
    phash = np.zeros((n, 8, 64), bool)
    rows: list[dict[str, Any]] = []
    for i, path in enumerate(df["path"]):
        rec: dict[str, Any] = {"path": path, "error": ""}
        try:
            raw = Path(path).read_bytes()
            rec["file_bytes"] = len(raw)
            rec["sha256"] = hashlib.sha256(raw).hexdigest()
            with Image.open(io.BytesIO(raw)) as im:
                rec.update(width=im.width, height=im.height, mode=im.mode, format=im.format or "")
                rgb_im = im.convert("RGB")
            small = rgb_im.resize((cfg.stats_size, cfg.stats_size), Image.Resampling.BILINEAR)
            rgb = np.asarray(small)
            rec.update(image_stats(rgb, cfg.white_level))
            background = np.all(rgb >= cfg.white_level, axis=-1)
            od = optical_density(rgb)
            tissue = ~background & (od.max(axis=-1) > 0.15)
            for c in range(3):
                od_hist[i, c] = np.histogram(np.clip(od[..., c][tissue], 0, OD_BINS[-1] - 1e-6), OD_BINS)[0]
            phash[i] = _phash_bits(rgb_im, cfg.rotated_dup_distance >= 0)
        except Exception as e:  # keep going: an unreadable image is itself an audit finding
            rec["error"] = f"{type(e).__name__}: {e}"
        rows.append(rec)
    table = pd.DataFrame(rows)
    for col in ("row", "slide", "center", "label", "y", "split", "mask"):
        if col in df.columns:
            table[col] = df[col].to_numpy()
    return ImageScan(table=table, od_hist=od_hist, phash=phash)


# ----------------------------------------------------------------------------------------------- tables

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
    cols = [f"mean_{c}" for c in CHANNELS] + [f"od_{c}" for c in CHANNELS] + ["od_total", "background_frac",
                                                                              "blur_lapvar"]
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


# ----------------------------------------------------------------------------------------------- duplicates

def hamming_matrix(bits: np.ndarray, rotations: bool = True, rows: slice | None = None) -> np.ndarray:
    """Hamming distances between perceptual hashes, (len(rows), N); with ``rotations`` the minimum over the 8
    rotations/flips of image j (and, for symmetry, of image i). ``rows`` limits the query images (chunking)."""
    rows = rows or slice(0, len(bits))
    a = bits[rows].astype(np.float32)  # (n, 8, 64)
    b = bits.astype(np.float32)  # (N, 8, 64)
    a0, b0 = a[:, 0, :], b[:, 0, :]
    best = np.full((a.shape[0], len(b)), 64.0, np.float32)
    for t in range(bits.shape[1] if rotations else 1):
        bt, at = b[:, t, :], a[:, t, :]
        # distance = |x| + |y| - 2 x.y  (BLAS matmul), image i as stored vs j transformed, and vice versa
        best = np.minimum(best, a0.sum(1)[:, None] + bt.sum(1)[None, :] - 2 * (a0 @ bt.T))
        best = np.minimum(best, at.sum(1)[:, None] + b0.sum(1)[None, :] - 2 * (at @ b0.T))
    return np.rint(best).astype(np.int16)


def near_pairs(bits: np.ndarray, max_distance: int, rotated_distance: int = -1,
               chunk: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j for hashes within ``max_distance`` as stored or within ``rotated_distance``
    after a rotation/flip; computed in row chunks so 10,000s of images fit in memory."""
    out: list[tuple[int, int, int]] = []
    n = len(bits)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        d = hamming_matrix(bits, rotations=False, rows=sl)
        near = d <= max_distance
        if rotated_distance >= 0:
            dr = hamming_matrix(bits, rotations=True, rows=sl)
            near |= dr <= rotated_distance
            d = np.minimum(d, dr)
        ii, jj = np.nonzero(near)
        for i, j in zip(ii + start, jj):
            if i < j:
                out.append((int(i), int(j), int(d[i - start, j])))
    return out


def find_duplicates(scan: ImageScan, max_distance: int = 8, folds: np.ndarray | None = None,
                    rotated_distance: int = 4) -> pd.DataFrame:
    """Pairs of exact (same sha256) and near duplicates: perceptual hashes within ``max_distance`` as stored,
    or within ``rotated_distance`` after rotating/flipping one image (-1 = do not check rotations; a stricter
    threshold because 8 orientations give 8 chances of a chance match).

    Columns: path_a, path_b, kind ("exact" / "near"), distance, slide_a/b, center_a/b, label_a/b, same_slide,
    same_label, fold_a/b and split_a/b (when given), across_folds / across_splits (True = possible leakage).
    """
    t = scan.table.reset_index(drop=True)
    ok = np.flatnonzero((t["error"] == "").to_numpy())
    pairs: dict[tuple[int, int], tuple[str, int]] = {}
    if len(ok):
        for _, idx in t.iloc[ok].groupby("sha256").groups.items():
            idx = sorted(idx)
            for i in range(len(idx)):
                for j in range(i + 1, len(idx)):
                    pairs[(idx[i], idx[j])] = ("exact", 0)
        for a, b, d in near_pairs(scan.phash[ok], max_distance, rotated_distance):
            pairs.setdefault((int(ok[a]), int(ok[b])), ("near", d))
    recs = []
    for (i, j), (kind, d) in sorted(pairs.items()):
        r = {"path_a": t.at[i, "path"], "path_b": t.at[j, "path"], "kind": kind, "distance": d,
             "row_a": t.at[i, "row"] if "row" in t else i + 1, "row_b": t.at[j, "row"] if "row" in t else j + 1}
        for col in ("slide", "center", "label", "split"):
            if col in t:
                r[f"{col}_a"], r[f"{col}_b"] = t.at[i, col], t.at[j, col]
        if folds is not None:
            r["fold_a"], r["fold_b"] = int(folds[i]), int(folds[j])
        recs.append(r)
    cols = ["path_a", "path_b", "kind", "distance", "row_a", "row_b"]
    res = pd.DataFrame(recs, columns=cols + [c for r in recs[:1] for c in r if c not in cols])
    if len(res):
        res["same_slide"] = res.get("slide_a") == res.get("slide_b") if "slide_a" in res else False
        res["same_label"] = res["label_a"] == res["label_b"] if "label_a" in res else True
        res["across_folds"] = (res["fold_a"] != res["fold_b"]) if "fold_a" in res else False
        if "split_a" in res:
            sa, sb = res["split_a"].astype(str), res["split_b"].astype(str)
            res["across_splits"] = (sa != sb) & (sa != "") & (sb != "")
        else:
            res["across_splits"] = False
    return res


def duplicate_groups(pairs: pd.DataFrame) -> list[list[str]]:
    """Connected groups of duplicate paths (union-find over the pairs), largest first."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs.get("path_a", []), pairs.get("path_b", [])):
        parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=len, reverse=True)


def folds_for(df: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> np.ndarray | None:
    """The fine-tuning folds (glomlib.data.splits.assign_folds); None when the manifest cannot be split."""
    from glomlib.data.splits import assign_folds

    labelled = df["y"].to_numpy() >= 0 if "y" in df else np.ones(len(df), bool)
    if labelled.sum() < 2 or df["slide"].nunique() < n_folds:
        return None
    try:
        return np.asarray(assign_folds(df, n_folds=n_folds, seed=seed))
    except Exception as e:  # report, do not hide: the audit still runs without folds
        print(f"Folds could not be assigned ({type(e).__name__}: {e}); duplicates across folds not checked.")
        return None


# ----------------------------------------------------------------------------------------------- masks

def mask_areas(df: pd.DataFrame, size: int = 224) -> pd.Series:
    """Share of each patch covered by its glomerulus mask (NaN where no mask path, -1 where unreadable)."""
    from PIL import Image

    vals = []
    for m in df["mask"] if "mask" in df else [""] * len(df):
        if not m:
            vals.append(np.nan)
            continue
        try:
            with Image.open(m) as im:
                a = np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST))
            vals.append(float((a > 127).mean()))
        except Exception:
            vals.append(-1.0)
    return pd.Series(vals, index=df.index, name="mask_area")


# ----------------------------------------------------------------------------------------------- flags

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


def quality_flags(scan: ImageScan, cfg: AuditConfig, duplicates: pd.DataFrame | None = None,
                  mask_area: pd.Series | None = None) -> pd.DataFrame:
    """One row per (flagged image, reason): unreadable, blur, background, stain_high / stain_low,
    exact_duplicate, near_duplicate, duplicate_across_folds, duplicate_across_splits, label_conflict,
    mask_missing_file, mask_small. Columns: ``FLAG_COLUMNS``."""
    t = scan.table.reset_index(drop=True)
    flags: list[dict[str, Any]] = []

    def add(i: int, reason: str, value: Any, threshold: Any, detail: str = "") -> None:
        flags.append({"row": t.at[i, "row"] if "row" in t else i + 1, "path": t.at[i, "path"],
                      "slide": t.at[i, "slide"] if "slide" in t else "", "center": t.at[i, "center"] if "center" in t else "",
                      "label": t.at[i, "label"] if "label" in t else "", "reason": reason, "value": value,
                      "threshold": threshold, "detail": detail})

    ok = t["error"] == ""
    for i in np.flatnonzero(~ok.to_numpy()):
        add(i, "unreadable", np.nan, "", t.at[i, "error"])
    good = t[ok]
    for i in good.index[good["blur_lapvar"] < cfg.blur_min]:
        add(i, "blur", round(good.at[i, "blur_lapvar"], 1), cfg.blur_min, "variance of Laplacian below threshold")
    for i in good.index[good["background_frac"] > cfg.background_max]:
        add(i, "background", round(good.at[i, "background_frac"], 3), cfg.background_max,
            f"share of near-white pixels (all channels >= {cfg.white_level})")
    centres = _centre(good)
    zs = {c: robust_z(good[f"od_{c}"], centres) for c in CHANNELS}
    for i in good.index:
        zc = {c: zs[c].at[i] for c in CHANNELS if np.isfinite(zs[c].at[i])}
        if not zc:
            continue
        c, z = max(zc.items(), key=lambda kv: abs(kv[1]))
        if abs(z) > cfg.stain_z:
            add(i, "stain_high" if z > 0 else "stain_low", round(float(z), 2), cfg.stain_z,
                f"tissue OD {c}={good.at[i, f'od_{c}']:.3f}, robust z vs centre {centres.at[i]} "
                f"(median {good.loc[centres == centres.at[i], f'od_{c}'].median():.3f})")
    if duplicates is not None and len(duplicates):
        pos = {p: k for k, p in enumerate(t["path"])}
        for _, r in duplicates.iterrows():
            reason = "exact_duplicate" if r["kind"] == "exact" else "near_duplicate"
            for me, other in (("a", "b"), ("b", "a")):
                i = pos[r[f"path_{me}"]]
                where = f"slide {r.get(f'slide_{other}', '')}, label {r.get(f'label_{other}', '')}"
                add(i, reason, int(r["distance"]), 0 if reason == "exact_duplicate" else cfg.near_dup_distance,
                    f"same as {Path(r[f'path_{other}']).name} ({where})")
                if r.get("across_folds", False):
                    add(i, "duplicate_across_folds", int(r["distance"]), "",
                        f"fold {r['fold_' + me]} vs fold {r['fold_' + other]} ({Path(r[f'path_{other}']).name})")
                if r.get("across_splits", False):
                    add(i, "duplicate_across_splits", int(r["distance"]), "",
                        f"split {r['split_' + me]} vs {r['split_' + other]} ({Path(r[f'path_{other}']).name})")
                if not r.get("same_label", True):
                    add(i, "label_conflict", int(r["distance"]), "",
                        f"duplicate {Path(r[f'path_{other}']).name} is labelled {r.get(f'label_{other}')}")
    if mask_area is not None:
        ma = mask_area.reset_index(drop=True)
        for i in ma.index[ma == -1.0]:
            add(i, "mask_missing_file", np.nan, "", f"mask file {t.at[i, 'mask']} could not be read")
        for i in ma.index[(ma >= 0) & (ma < cfg.mask_area_min)]:
            add(i, "mask_small", round(float(ma.at[i]), 4), cfg.mask_area_min,
                "empty mask" if ma.at[i] == 0 else "mask covers a small share of the patch")
    res = pd.DataFrame(flags, columns=FLAG_COLUMNS)
    return res.sort_values(["reason", "row"], kind="stable").reset_index(drop=True)


def flag_summary(flags: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """Images flagged per reason (and share of the collection)."""
    s = flags.groupby("reason")["path"].nunique().rename("images").to_frame()
    s.loc["any reason"] = flags["path"].nunique()
    s["share"] = (s["images"] / max(n_images, 1)).round(4)
    return s


# ----------------------------------------------------------------------------------------------- figures

def load_rgb(path: str, size: int = 160) -> np.ndarray:
    """An image as RGB uint8 (size x size) for display; grey placeholder when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except Exception:
        return np.full((size, size, 3), 128, np.uint8)


def load_mask(path: str, size: int = 160) -> np.ndarray | None:
    from PIL import Image

    if not path:
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
    except Exception:
        return None


def sample_rows(df: pd.DataFrame, by: str, n: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Up to ``n`` random rows per group, reproducible."""
    key = _centre(df) if by == "center" else _label(df) if by == "label" else df[by].astype(str)
    return {g: grp.sample(min(n, len(grp)), random_state=seed) for g, grp in df.groupby(key)}


def montage_by(df: pd.DataFrame, by: str, n: int = 8, seed: int = 0, size: int = 160):
    """One montage figure with a row of ``n`` examples per group (class or centre); captions = slide."""
    from glomlib.evaluate import plots

    samples = sample_rows(df, by, n, seed)
    images, captions = [], []
    for g, rows in samples.items():
        for k in range(n):
            if k < len(rows):
                r = rows.iloc[k]
                images.append(load_rgb(r["path"], size))
                other = r["label"] if by == "center" else (r["center"] or "")
                head = f"[{g}]  " if k == 0 else ""
                captions.append(f"{head}{other}\n{r['slide']}".strip())
            else:
                images.append(np.full((size, size, 3), 255, np.uint8))
                captions.append("")
    title = {"center": "Examples per centre (one row each)", "label": "Examples per class (one row each)"}.get(by, by)
    return plots.montage(images, captions, ncols=n, title=title, caption_size=9)


def flagged_gallery(flags: pd.DataFrame, df: pd.DataFrame, max_per_reason: int = 8, size: int = 160,
                    reasons: list[str] | None = None):
    """Montage of flagged images, one row per reason (worst first), captioned with reason and value."""
    from glomlib.evaluate import plots

    masks = dict(zip(df["path"], df["mask"])) if "mask" in df else {}
    images, captions, mks = [], [], []
    reasons = reasons or sorted(flags["reason"].unique())
    for reason in reasons:
        f = flags[flags["reason"] == reason].drop_duplicates("path")
        if reason in ("blur", "mask_small"):
            f = f.sort_values("value")
        elif reason in ("background",):
            f = f.sort_values("value", ascending=False)
        elif reason.startswith("stain"):
            f = f.assign(a=f["value"].abs()).sort_values("a", ascending=False)
        f = f.head(max_per_reason)
        for k in range(max_per_reason):
            if k < len(f):
                r = f.iloc[k]
                images.append(load_rgb(r["path"], size))
                mks.append(load_mask(masks.get(r["path"], ""), size) if reason == "mask_small" else None)
                val = r["value"]
                vtxt = f"{val:g}" if isinstance(val, (int, float, np.floating, np.integer)) and np.isfinite(val) else ""
                captions.append(f"{reason} {vtxt}\n{Path(r['path']).stem}")
            else:
                images.append(np.full((size, size, 3), 255, np.uint8))
                mks.append(None)
                captions.append("")
    return plots.montage(images, captions, ncols=max_per_reason, title="Flagged images (one row per reason)",
                         caption_size=8, masks=mks)


def duplicate_gallery(pairs: pd.DataFrame, max_pairs: int = 8, size: int = 140):
    """Side-by-side duplicate pairs (two tiles per pair), closest first."""
    from glomlib.evaluate import plots

    p = pairs.sort_values(["distance"]).head(max_pairs)
    images, captions = [], []
    for _, r in p.iterrows():
        for s in ("a", "b"):
            images.append(load_rgb(r[f"path_{s}"], size))
            extra = f" · fold {r[f'fold_{s}']}" if f"fold_{s}" in r else ""
            captions.append(f"{r['kind']} d={r['distance']}\n{Path(r[f'path_{s}']).stem}\n{r.get(f'label_{s}', '')}{extra}")
    return plots.montage(images, captions, ncols=min(8, max(2, len(images))),
                         title="Duplicate pairs (neighbouring tiles belong together)", caption_size=8)


def channel_boxplots(table: pd.DataFrame):
    """Box plots per centre: RGB means (top) and tissue OD per channel (bottom)."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    t = table[table["error"] == ""].assign(center=_centre(table))
    centres = sorted(t["center"].unique())
    fig, axes = plt.subplots(2, 3, figsize=(plots.REPORT_WIDTH, 6.5), sharey="row")
    colours = {"R": "#c0392b", "G": "#27ae60", "B": "#2e86c1"}
    for row, (prefix, ylabel) in enumerate((("mean_", "mean intensity (0-255)"), ("od_", "tissue optical density"))):
        for k, c in enumerate(CHANNELS):
            ax = axes[row, k]
            data = [t.loc[t["center"] == g, prefix + c].dropna().to_numpy() for g in centres]
            bp = ax.boxplot(data, tick_labels=centres, patch_artist=True, widths=0.6, flierprops={"markersize": 3})
            for b in bp["boxes"]:
                b.set_facecolor(colours[c])
                b.set_alpha(0.45)
            ax.set_title(f"{c} channel", fontsize=11)
            ax.tick_params(axis="x", labelsize=9, labelrotation=20)
            ax.grid(axis="y", alpha=0.3)
            if k == 0:
                ax.set_ylabel(ylabel)
    fig.suptitle("Colour and stain per centre (each box = images of one centre)", fontsize=12)
    fig.tight_layout()
    return fig


def od_histogram_figure(hists: dict[str, np.ndarray]):
    """Per-channel OD distributions of tissue pixels, one line per centre."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    centres_ = (OD_BINS[:-1] + OD_BINS[1:]) / 2
    fig, axes = plt.subplots(1, 3, figsize=(plots.REPORT_WIDTH, 3.6), sharey=True)
    for k, c in enumerate(CHANNELS):
        ax = axes[k]
        for g, h in hists.items():
            ax.plot(centres_, h[k], linewidth=1.8, label=g)
        ax.set_title(f"OD, {c} channel", fontsize=11)
        ax.set_xlabel("optical density (tissue pixels)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of pixels")
    axes[-1].legend(fontsize=9, frameon=False)
    fig.suptitle("Optical-density distributions per centre (higher OD = darker stain)", fontsize=12)
    fig.tight_layout()
    return fig


def quality_histograms(table: pd.DataFrame, cfg: AuditConfig):
    """Distributions of the quality measures with the flag thresholds marked."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    t = table[table["error"] == ""].assign(center=_centre(table))
    fig, axes = plt.subplots(1, 3, figsize=(plots.REPORT_WIDTH, 3.6))
    specs = [("blur_lapvar", "sharpness: variance of Laplacian (log scale)", cfg.blur_min, True),
             ("background_frac", "share of near-white (background) pixels", cfg.background_max, False),
             ("od_total", "tissue OD (R+G+B)", None, False)]
    for ax, (col, xlabel, thr, log) in zip(axes, specs):
        for g, grp in t.groupby("center"):
            v = grp[col].dropna().to_numpy()
            if log:
                v = np.log10(np.maximum(v, 1e-3))
            ax.hist(v, bins=30, histtype="step", linewidth=1.6, label=g)
        if thr is not None:
            ax.axvline(np.log10(thr) if log else thr, color="black", linestyle="--", label="flag threshold")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("images")
    axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=9, frameon=False, loc="upper right")
    fig.suptitle("Quality measures per centre; dashed = flag threshold", fontsize=12)
    fig.tight_layout()
    return fig


def mask_area_figure(df: pd.DataFrame, area: pd.Series):
    """Distribution of the glomerulus share of the patch, per class and per centre."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    d = df.assign(area=area.to_numpy(), center=_centre(df), label=_label(df))
    d = d[d["area"] >= 0]
    fig, axes = plt.subplots(1, 2, figsize=(plots.REPORT_WIDTH, 3.6), sharey=True)
    for ax, key in zip(axes, ("label", "center")):
        for g, grp in d.groupby(key):
            ax.hist(grp["area"], bins=np.linspace(0, 1, 26), histtype="step", linewidth=1.8, density=True,
                    label=f"{g} (median {grp['area'].median():.2f})")
        ax.set_xlabel("glomerulus area / patch area (from mask)")
        ax.set_title(f"per {'class' if key == 'label' else 'centre'}", fontsize=11)
        ax.legend(fontsize=9, frameon=False)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    fig.suptitle("Glomerulus size relative to the patch", fontsize=12)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- labels

def label_changes(df: pd.DataFrame) -> pd.DataFrame:
    """Rows a label review touched (``glomlib data apply-review`` records ``review_*`` columns): path, slide,
    label before and now, decision (changed / confirmed / unsure), reviewer, date, comment. Empty when the
    manifest carries no review record."""
    cols = ["row", "path", "slide", "label_before", "label", "decision", "reviewer", "date", "comment"]
    if "review_decision" not in df.columns:
        return pd.DataFrame(columns=cols)
    d = df[df["review_decision"].astype(str) != ""]
    return pd.DataFrame({"row": d["row"] if "row" in d else d.index + 1, "path": d["path"], "slide": d["slide"],
                         "label_before": d["review_label_before"], "label": d["label"],
                         "decision": d["review_decision"], "reviewer": d["review_reviewer"],
                         "date": d["review_date"], "comment": d["review_comment"]}, columns=cols)


def show_labels(df: pd.DataFrame, out: str | Path | None = None) -> dict[str, Any]:
    """Notebook 01's label section: the review record (which labels changed, by whom, when) and, with several
    ``label_<rater>`` columns, the raters' agreement (pairwise Cohen's kappa, Fleiss' kappa, per centre, ties).
    Displays the tables, writes ``label_changes.csv`` / ``rater_*.csv`` into ``out``; returns what it found."""
    from IPython.display import Markdown, display

    from glomlib.data.raters import agreement_report, rater_columns

    res: dict[str, Any] = {"changes": label_changes(df)}
    ch = res["changes"]
    if len(ch):
        n = ch["decision"].value_counts().to_dict()
        display(Markdown(f"**Label review record:** {len(ch)} image(s) reviewed — {n.get('changed', 0)} label(s) "
                         f"changed, {n.get('confirmed', 0)} confirmed, {n.get('unsure', 0)} unsure."))
        display(ch.drop(columns=["path"]))
    else:
        display(Markdown("No label review is recorded in this manifest (`glomlib data apply-review` adds one)."))
    cols = rater_columns(df)
    if len(cols) >= 2:
        rep = agreement_report(df, cols)
        res["raters"] = rep
        display(Markdown(f"**{len(cols)} raters** ({', '.join(rep['raters'])}). Fleiss' kappa over the "
                         f"{rep['fleiss']['n']} images every rater labelled: **{rep['fleiss']['kappa']:.3f}**; "
                         f"{int(rep['consensus']['tie'].sum())} image(s) without a majority (ties)."))
        display(rep["pairwise"].round(3))
        display(rep["per_group"].round(3))
        if len(rep["ties"]):
            display(rep["ties"][["row", "slide", *cols]] if "row" in rep["ties"] else rep["ties"][["slide", *cols]])
    else:
        display(Markdown(f"{len(cols)} rater column(s) (`label_<rater>`): no inter-rater agreement to report."))
    if out is not None:
        out = Path(out)
        if len(ch):
            ch.to_csv(out / "label_changes.csv", index=False)
        if "raters" in res:
            res["raters"]["pairwise"].to_csv(out / "rater_pairwise_kappa.csv", index=False)
            res["raters"]["per_group"].to_csv(out / "rater_agreement_per_centre.csv", index=False)
    return res


# ----------------------------------------------------------------------------------------------- outputs

def write_outputs(out: str | Path, scan: ImageScan, flags: pd.DataFrame, duplicates: pd.DataFrame,
                  summary: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``flags.csv``, ``image_stats.csv``, ``duplicates.csv`` and ``audit_summary.json`` into ``out``."""
    from glomlib.core.io import write_json_atomic

    out = Path(out)
    paths = {"flags": out / "flags.csv", "image_stats": out / "image_stats.csv", "duplicates": out / "duplicates.csv"}
    flags.to_csv(paths["flags"], index=False)
    scan.table.to_csv(paths["image_stats"], index=False)
    duplicates.to_csv(paths["duplicates"], index=False)
    if summary is not None:
        paths["summary"] = write_json_atomic(out / "audit_summary.json", summary)
    return paths


def summarise(df: pd.DataFrame, scan: ImageScan, flags: pd.DataFrame, duplicates: pd.DataFrame,
              area: pd.Series | None = None) -> dict[str, Any]:
    """Key numbers of the audit as a JSON-ready dict."""
    s: dict[str, Any] = {
        "images": int(len(df)),
        "slides": int(df["slide"].nunique()),
        "centres": sorted(map(str, _centre(df).unique())),
        "classes": {str(k): int(v) for k, v in _label(df).value_counts().items()},
        "unreadable": int((scan.table["error"] != "").sum()),
        "flagged_images": int(flags["path"].nunique()),
        "flags_per_reason": {str(k): int(v) for k, v in flags.groupby("reason")["path"].nunique().items()},
        "duplicate_pairs": {str(k): int(v) for k, v in duplicates["kind"].value_counts().items()} if len(duplicates) else {},
        "duplicate_pairs_across_folds": int(duplicates["across_folds"].sum()) if len(duplicates) else 0,
        "stain_per_centre": stain_summary(scan.table)[["images", "od_R", "od_G", "od_B", "od_total"]]
        .to_dict(orient="index"),
    }
    if area is not None and area.notna().any():
        a = area[area >= 0]
        s["mask_area_median"] = float(a.median())
        s["mask_area_median_per_class"] = {str(k): float(v) for k, v in a.groupby(_label(df)).median().items()}
    return s
