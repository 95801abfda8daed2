"""Several raters: per-rater label columns, majority consensus with ties reported, Cohen's and Fleiss' kappa.

A manifest may carry one label column per rater, named ``label_<rater>`` (e.g. ``label_rater1``,
``label_rater2``); an empty cell means that rater did not label that image. :func:`consensus` takes the
majority of the labels given; an image whose top two labels have equal votes is a tie and is reported, never
resolved silently. Kappas come from scikit-learn (Cohen) and statsmodels (Fleiss); :func:`agreement_report`
gives the tables the audit (notebook 01) shows.

This module does not import torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

RATER_PREFIX = "label_"


def rater_columns(df: pd.DataFrame) -> list[str]:
    """The ``label_<rater>`` columns of a manifest, in file order."""
    return [c for c in df.columns if str(c).startswith(RATER_PREFIX) and len(str(c)) > len(RATER_PREFIX)]


def rater_name(column: str) -> str:
    return column[len(RATER_PREFIX) :] if column.startswith(RATER_PREFIX) else column


def rater_column(df: pd.DataFrame, rater: str) -> str:
    """The column of ``rater`` (``rater1`` or ``label_rater1``); ValueError naming the raters present."""
    cols = rater_columns(df)
    for c in (rater, RATER_PREFIX + rater):
        if c in cols:
            return c
    raise ValueError(
        f"no label column for rater {rater!r}; the manifest's rater columns are {cols or 'none'} "
        f"(name them '{RATER_PREFIX}<rater>')."
    )


def _labels(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    return np.array([[str(v).strip() for v in df[c]] for c in columns], dtype=object).T.reshape(len(df), len(columns))


def consensus(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Majority label per row over the rater columns. Columns: ``consensus`` ("" for ties and unrated rows),
    ``votes`` (raters who labelled the row), ``majority`` (votes for the consensus label), ``tie`` (True when
    the two most frequent labels have equal votes), ``unanimous``."""
    columns = list(columns) if columns is not None else rater_columns(df)
    if not columns:
        raise ValueError(f"no rater columns ('{RATER_PREFIX}<rater>') in the manifest; columns are {list(df.columns)}")

    def one(row) -> tuple[str, int, int, bool, bool]:
        counts = pd.Series([v for v in row if v], dtype=object).value_counts()
        if not len(counts):
            return "", 0, 0, False, False
        tie = len(counts) > 1 and counts.iloc[1] == counts.iloc[0]
        return "" if tie else str(counts.index[0]), int(counts.sum()), int(counts.iloc[0]), bool(tie), len(counts) == 1

    cols = ["consensus", "votes", "majority", "tie", "unanimous"]
    return pd.DataFrame([one(r) for r in _labels(df, columns)], columns=cols, index=df.index)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa (scikit-learn) over the items both raters labelled (empty = not labelled); NaN without a
    shared item, 1.0 when both use one and the same label throughout."""
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray([str(x) for x in a], object), np.asarray([str(x) for x in b], object)
    both = (a != "") & (b != "")
    if not both.any():
        return float("nan")
    if len(set(a[both]) | set(b[both])) == 1:
        return 1.0  # chance agreement 1: kappa undefined, the raters agree perfectly
    return float(cohen_kappa_score(a[both], b[both]))


def category_counts(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Items x categories table of how many raters gave each label (the input of Fleiss' kappa)."""
    columns = list(columns) if columns is not None else rater_columns(df)
    lab = _labels(df, columns)
    cats = sorted({v for v in lab.ravel() if v})
    return pd.DataFrame({c: (lab == c).sum(axis=1) for c in cats}, index=df.index)


def fleiss_kappa(counts: np.ndarray | pd.DataFrame) -> float:
    """Fleiss' kappa (statsmodels) of an items x categories count table with the same number (>= 2) of ratings per
    item (ValueError otherwise); NaN when chance agreement is 1."""
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    t = np.asarray(counts, float)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError("fleiss_kappa needs a non-empty items x categories count table")
    n = t.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError(
            f"fleiss_kappa needs the same number (>= 2) of ratings per item; got {sorted(set(n.tolist()))}"
        )
    if np.isclose(((t.sum(axis=0) / t.sum()) ** 2).sum(), 1.0):
        return float("nan")
    return float(sm_fleiss(t, method="fleiss"))


def pairwise_kappas(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per pair of raters: rater_a, rater_b, n (items both labelled), agreement (share), kappa."""
    columns = list(columns) if columns is not None else rater_columns(df)
    rows = []
    for ca, cb in itertools.combinations(columns, 2):
        a, b = df[ca].astype(str).str.strip(), df[cb].astype(str).str.strip()
        both = (a != "") & (b != "")
        agreement = float((a[both] == b[both]).mean()) if both.any() else float("nan")
        rows.append((rater_name(ca), rater_name(cb), int(both.sum()), agreement, cohen_kappa(a, b)))
    return pd.DataFrame(rows, columns=["rater_a", "rater_b", "n", "agreement", "kappa"])


def _fleiss_complete(df: pd.DataFrame, columns: Sequence[str]) -> tuple[float, int]:
    lab = _labels(df, columns)
    complete = (lab != "").all(axis=1)
    if complete.sum() == 0 or len(columns) < 2:
        return float("nan"), 0
    return fleiss_kappa(category_counts(df[complete], columns)), int(complete.sum())


def agreement_report(df: pd.DataFrame, columns: Sequence[str] | None = None, by: str = "center") -> dict[str, object]:
    """Inter-rater agreement of a manifest: ``pairwise`` (Cohen's kappa per pair), ``fleiss`` (kappa over the
    items every rater labelled, and that number ``n``), ``per_group`` (per centre: images, share unanimous,
    Fleiss' kappa, mean pairwise Cohen's kappa), ``ties`` (rows whose majority is a tie)."""
    columns = list(columns) if columns is not None else rater_columns(df)
    if len(columns) < 2:
        raise ValueError(f"agreement needs at least two rater columns ('{RATER_PREFIX}<rater>'); found {columns}")
    cons = consensus(df, columns)
    fk, n_complete = _fleiss_complete(df, columns)
    groups = df[by].astype(str).replace("", "(no centre)") if by in df.columns else pd.Series("all", index=df.index)
    per = []
    for g, idx in groups.groupby(groups).groups.items():
        sub = df.loc[idx]
        gk, gn = _fleiss_complete(sub, columns)
        pk = pairwise_kappas(sub, columns)
        per.append((g, len(sub), float(cons.loc[idx, "unanimous"].mean()), gk, gn, float(pk["kappa"].mean())))
    ties = df.loc[cons["tie"]]
    return {
        "raters": [rater_name(c) for c in columns],
        "pairwise": pairwise_kappas(df, columns),
        "fleiss": {"kappa": fk, "n": n_complete},
        "per_group": pd.DataFrame(
            per, columns=[by, "images", "unanimous", "fleiss_kappa", "n_complete", "mean_pairwise_kappa"]
        ),
        "ties": ties,
        "consensus": cons,
    }
