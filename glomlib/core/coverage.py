"""A published metric covers its whole fold: predicted vs expected images per (label fraction, seed, fold)."""

from __future__ import annotations

from typing import Any

from glomlib.core.config import budget_name


class CoverageError(ValueError):
    """Predictions cover less (or other) than their fold: no metric is published from them."""

    exit_code = 1  # glomlib.cli's exit-code table: the data (the predictions do not match the folds)


def fold_coverage(predictions: Any, folds: Any) -> list[dict[str, Any]]:
    """Per (label fraction, seed, fold): ``predicted`` distinct images vs ``expected`` images of that fold.

    ``predictions``: one row per predicted image (``path``, ``seed``, ``fold``, optionally ``label_fraction``);
    ``folds``: the fold table (``folds.csv``: ``seed``, ``slide``, ``fold``, ``n`` images; fold -1 = held out).
    Raises :class:`CoverageError` naming every fold whose predictions are missing, repeated or foreign, so that a
    partial AUC is never published."""
    import pandas as pd

    pred = pd.DataFrame(predictions)
    if "label_fraction" not in pred.columns:
        pred = pred.assign(label_fraction=1.0)
    table = pd.DataFrame(folds)
    table = table[table["fold"].astype(int) >= 0]
    if "seed" not in table.columns:
        table = table.assign(seed=pred["seed"].iloc[0] if len(pred) else 0)
    expected = table.groupby([table["seed"].astype(int), table["fold"].astype(int)])["n"].sum()
    rows, bad = [], []
    for frac in sorted(pred["label_fraction"].astype(float).unique()) or [1.0]:
        p = pred[pred["label_fraction"].astype(float) == frac]
        for (seed, fold), n_exp in expected.items():
            g = p[(p["seed"].astype(int) == seed) & (p["fold"].astype(int) == fold)]
            row = {"label_fraction": float(frac), "seed": int(seed), "fold": int(fold)}
            row.update(predicted=int(g["path"].nunique()), expected=int(n_exp), rows=len(g))
            rows.append(row)
            if row["predicted"] != row["expected"] or row["rows"] != row["expected"]:
                bad.append(row)
    if bad:
        what = "; ".join(
            f"label budget {budget_name(r['label_fraction'])} seed {r['seed']} fold {r['fold']}: {r['predicted']} of "
            f"{r['expected']} images predicted ({r['rows']} rows)"
            for r in bad
        )
        raise CoverageError(
            f"the predictions do not cover their folds ({what}); no metric is published from part of a fold. "
            "The run's predictions and its data no longer match (was it resumed on changed data?): "
            "start a new run on the data as it is now."
        )
    return rows
