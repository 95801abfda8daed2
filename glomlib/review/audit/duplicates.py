"""Exact (sha256) and near duplicates (perceptual hash, rotation/flip aware) and the folds they straddle."""

from __future__ import annotations

import numpy as np
import pandas as pd

from glomlib.data.splits import assign_folds
from glomlib.review.audit.scan import ImageScan


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


def near_pairs(
    bits: np.ndarray, max_distance: int, rotated_distance: int = -1, chunk: int = 2048
) -> list[tuple[int, int, int]]:
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


def find_duplicates(
    scan: ImageScan, max_distance: int = 8, folds: np.ndarray | None = None, rotated_distance: int = 4
) -> pd.DataFrame:
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
        r = {
            "path_a": t.at[i, "path"],
            "path_b": t.at[j, "path"],
            "kind": kind,
            "distance": d,
            "row_a": t.at[i, "row"] if "row" in t else i + 1,
            "row_b": t.at[j, "row"] if "row" in t else j + 1,
        }
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
    labelled = df["y"].to_numpy() >= 0 if "y" in df else np.ones(len(df), bool)
    if labelled.sum() < 2 or df["slide"].nunique() < n_folds:
        return None
    try:
        return np.asarray(assign_folds(df, n_folds=n_folds, seed=seed))
    except Exception as e:  # report, do not hide: the audit still runs without folds
        print(f"Folds could not be assigned ({type(e).__name__}: {e}); duplicates across folds not checked.")
        return None
