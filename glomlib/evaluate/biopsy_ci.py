"""The per-biopsy read-out with its uncertainty (extends :mod:`glomlib.evaluate.biopsy`).

Per biopsy: the share of positive glomeruli from hard calls (``prob >= threshold``) and from the (calibrated)
mean probability, each with a 95 % percentile-bootstrap interval that resamples the biopsy's glomeruli with
replacement and, for a model bundle, its members too (a bundle's spread is part of the uncertainty); and a flag
when the biopsy has fewer glomeruli than :data:`MIN_GLOMERULI`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from glomlib.models.bundle import DEFAULT_COMBINE, combine_probs
from glomlib.models.calibration import apply_calibration

#: fewer glomeruli than this and the biopsy is flagged: the Oxford classification (MEST-C) takes a biopsy with
#: fewer than 8 glomeruli as inadequate for scoring (Roberts et al. 2009, Trimarchi et al. 2017), and below 8 one
#: glomerulus moves the share by more than 12 percentage points.
MIN_GLOMERULI = 8
MIN_WHY = (
    f"fewer than {MIN_GLOMERULI} glomeruli: the Oxford classification (MEST-C) takes such a biopsy as inadequate "
    f"for scoring, and one glomerulus moves the share by more than {100 / MIN_GLOMERULI:.1f} percentage points"
)


def _shares(raw: np.ndarray, thr: float, calibration: Mapping | None, combine: str) -> tuple[np.ndarray, ...]:
    """``raw`` (..., n, M) member probabilities -> (share of hard calls, mean probability) over the n glomeruli."""
    shape = raw.shape[:-1]
    p = apply_calibration(combine_probs(raw.reshape(-1, raw.shape[-1]), combine), calibration).reshape(shape)
    return (p >= thr).mean(axis=-1), p.mean(axis=-1)


def biopsy_ci(
    raw: Any,
    biopsy: Any,
    threshold: float,
    *,
    y: Any = None,
    calibration: Mapping[str, Any] | None = None,
    combine: str = DEFAULT_COMBINE,
    n_boot: int = 1000,
    seed: int = 0,
    min_glomeruli: int = MIN_GLOMERULI,
) -> pd.DataFrame:
    """One row per biopsy: ``n``, ``too_few``, ``true_share`` (when ``y``), ``hard_share`` / ``hard_lo`` /
    ``hard_hi`` and ``prob_share`` / ``prob_lo`` / ``prob_hi`` (95 % CI).

    ``raw``: the network's probabilities ``(N,)`` or a bundle's member probabilities ``(N, M)``; ``calibration``
    (a model file's) and ``threshold`` are applied after combining the members as ``combine``."""
    raw = np.asarray(raw, dtype=float)
    raw = raw[:, None] if raw.ndim == 1 else raw
    biopsy = np.asarray(biopsy).astype(str)
    rng, rows = np.random.default_rng(seed), []
    for b in sorted(set(biopsy)):
        idx = np.flatnonzero(biopsy == b)
        r, n, m = raw[idx], len(idx), raw.shape[1]
        hard, prob = _shares(r, threshold, calibration, combine)
        row = {"biopsy": b, "n": n, "too_few": bool(n < min_glomeruli)}
        if y is not None:
            row["true_share"] = float(np.mean(np.asarray(y)[idx]))
        row.update(hard_share=float(hard), prob_share=float(prob))
        if n_boot:
            gi = rng.integers(0, n, size=(n_boot, n))
            mi = rng.integers(0, m, size=(n_boot, m)) if m > 1 else np.zeros((n_boot, 1), dtype=int)
            bh, bp = _shares(r[gi[:, :, None], mi[:, None, :]], threshold, calibration, combine)
            row.update(hard_lo=np.quantile(bh, 0.025), hard_hi=np.quantile(bh, 0.975))
            row.update(prob_lo=np.quantile(bp, 0.025), prob_hi=np.quantile(bp, 0.975))
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(min_glomeruli=min_glomeruli, why=MIN_WHY, members=raw.shape[1], n_boot=n_boot)
    return out


def from_predictions(pred: pd.DataFrame, meta: Mapping[str, Any], by: str = "slide", **kw: Any) -> pd.DataFrame:
    """:func:`biopsy_ci` of an evaluate predictions table: ``prob_member_<i>`` columns (a bundle) or ``prob_raw``."""
    members = [c for c in pred.columns if c.startswith("prob_member_")]
    raw = pred[members].to_numpy() if members else pred["prob_raw"].to_numpy()
    y = pred["y"].to_numpy() if "y" in pred.columns else None
    how = {"calibration": meta.get("calibration"), "combine": meta.get("combine", DEFAULT_COMBINE)}
    return biopsy_ci(raw, pred[by], float(meta.get("threshold", 0.5)), y=y, **how, **kw)
