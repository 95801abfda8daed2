"""Numbers of a selection simulation: AUC per budget, area under the budget curve, paired deltas vs random.

AUC is computed per fold on that fold's test slides and averaged over the (seed, fold) selections that hold both
classes; selections with one class are counted in ``one_class`` (a share of the seeds x folds), never averaged
into AUC. ``delta`` (strategy - random) pairs the same seed and fold and averages over the pairs where both have a
classifier. CIs are percentile bootstraps that resample slides (a slide's glomeruli move together, as in
``glomlib.evaluate.metrics.bootstrap_auc_difference(groups=slides)``) and seeds together, so both the test
slides and the luck of the draw are in the interval.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from glomlib.select.simulate import Simulation


def weighted_auc(score: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC (ties count half) of one score vector under each row of image weights ``w`` (``(n_boot, n)``): the
    Mann-Whitney statistic with a resampled slide's images counted as often as the slide was drawn."""
    order = np.argsort(score, kind="mergesort")
    s, yy, ws = score[order], y[order], w[:, order]
    neg = np.where(yy == 0, ws, 0.0)
    cum = np.cumsum(neg, axis=1)
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    first = np.repeat(start, counts)
    last = first + np.repeat(counts, counts) - 1
    below = np.where(first > 0, cum[:, np.maximum(first - 1, 0)], 0.0)
    tied = cum[:, last] - below
    pos = yy == 1
    num = (ws[:, pos] * (below[:, pos] + 0.5 * tied[:, pos])).sum(axis=1)
    den = ws[:, pos].sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def fold_aucs(sim: Simulation, weights: np.ndarray) -> np.ndarray:
    """AUC ``[draw, strategy, budget, seed, fold]`` on each fold's test slides (NaN where no classifier)."""
    S, B, K, F = sim.valid.shape
    out = np.full((len(weights), S, B, K, F), np.nan)
    for f in range(F):
        test = np.flatnonzero(sim.folds == f)
        w, y = weights[:, test], sim.y[test]
        for s, b, k in zip(*np.nonzero(sim.valid[:, :, :, f])):
            out[:, s, b, k, f] = weighted_auc(sim.prob[s, b, k, test], y, w)
    return out


def _aubc(curve: np.ndarray, budgets) -> np.ndarray:
    """Area under the AUC-vs-log2(labels) curve, divided by its width (so it reads as a mean AUC); NaN for budgets
    that are not label counts (notebook 04's shares and N/class keys)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.log2(np.asarray(budgets, dtype=float))
    return np.trapezoid(curve, x, axis=-1) / (x[-1] - x[0]) if len(x) > 1 else curve[..., 0]


def _reduce(a: np.ndarray, seeds: np.ndarray, ref: int) -> dict[str, np.ndarray]:
    """Means over (seed, fold) of AUC and of the paired delta vs strategy ``ref``: ``[draw, strategy, budget]``."""
    a = a[:, :, :, seeds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no selection had a classifier
        mean = np.nanmean(a, axis=(3, 4))
        delta = np.nanmean(a - a[:, ref : ref + 1], axis=(3, 4))
    return {"mean": mean, "delta": delta}


def bootstrap(sim: Simulation, n_boot: int = 1000, seed: int = 0, ref: str = "random") -> dict[str, np.ndarray]:
    """Point estimates (draw 0: every slide and seed once) and ``n_boot`` draws resampling slides and seeds."""
    rng = np.random.default_rng(seed)
    names, inv = np.unique(sim.slides, return_inverse=True)
    draws = np.ones((n_boot + 1, len(names)))
    draws[1:] = np.stack(
        [np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)) for _ in range(n_boot)]
    )
    K = len(sim.seeds)
    seed_idx = np.vstack([np.arange(K)] + [rng.integers(0, K, K) for _ in range(n_boot)])
    a = fold_aucs(sim, draws[:, inv])
    r = sim.strategies.index(ref) if ref in sim.strategies else 0
    parts = [_reduce(a[d : d + 1], seed_idx[d], r) for d in range(n_boot + 1)]
    mean = np.concatenate([p["mean"] for p in parts])
    delta = np.concatenate([p["delta"] for p in parts])
    # the area spans the budgets where every strategy has a classifier in some selection (not one-class only)
    common = np.isfinite(mean[0]).all(axis=0)
    first = int(np.argmax(common)) if common.any() else len(sim.budgets) - 1
    aubc = np.stack([_aubc(m[:, first:], sim.budgets[first:]) for m in mean])
    return {
        "mean": mean,
        "delta": delta,
        "aubc": aubc,
        "daubc": aubc - aubc[:, r : r + 1],
        "ref": r,
        "aubc_from": sim.budgets[first],
    }


def _ci(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(x, 2.5, axis=0), np.nanpercentile(x, 97.5, axis=0)


def budget_table(sim: Simulation, boot: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per (strategy, budget): AUC mean and 95 % band, delta vs random with CI, one-class share."""
    lo, hi = _ci(boot["mean"][1:])
    dlo, dhi = _ci(boot["delta"][1:])
    rows = []
    for s, name in enumerate(sim.strategies):
        for b, budget in enumerate(sim.budgets):
            v = sim.valid[s, b]
            rows.append(
                {
                    "strategy": name,
                    "labels": budget,
                    "auc": boot["mean"][0, s, b],
                    "auc_low": lo[s, b],
                    "auc_high": hi[s, b],
                    "delta_vs_random": boot["delta"][0, s, b],
                    "delta_low": dlo[s, b],
                    "delta_high": dhi[s, b],
                    "one_class_share": 1 - v.mean(),
                    "n_with_classifier": int(v.sum()),
                    "n_selections": v.size,
                    "slides_picked": sim.slides_picked[s, b].mean(),
                }
            )
    return pd.DataFrame(rows)


def strategy_table(sim: Simulation, boot: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per strategy: area under the budget curve (AUBC), its paired delta vs random with CI, and the
    labels it needs to reach random's mean AUC at the largest budget (first budget at or above it)."""
    lo, hi = _ci(boot["daubc"][1:])
    target = boot["mean"][0, boot["ref"], -1]
    rows = []
    for s, name in enumerate(sim.strategies):
        curve = boot["mean"][0, s]
        reach = [b for b, m in zip(sim.budgets, curve) if np.isfinite(m) and m >= target]
        rows.append(
            {
                "strategy": name,
                "aubc": boot["aubc"][0, s],
                "aubc_from_labels": boot["aubc_from"],
                "aubc_delta": boot["daubc"][0, s],
                "aubc_delta_low": lo[s],
                "aubc_delta_high": hi[s],
                "labels_to_match_random_at_max": reach[0] if reach else np.nan,
                "one_class_share_at_min": 1 - sim.valid[s, 0].mean(),
            }
        )
    return pd.DataFrame(rows)


def from_predictions(preds: dict[str, pd.DataFrame]) -> Simulation:
    """Fine-tune out-of-fold predictions (notebook 03's ``predictions.csv``, one frame per init) as a
    :class:`Simulation` ``[init, budget, seed, image]`` for :func:`bootstrap`: the budgets (``label_fraction``)
    and seeds every init holds, the images every init predicted, each seed's test folds pooled (``folds`` 0).
    A (budget, seed) with an image unpredicted by some init is not ``valid``."""
    inits = list(preds)
    keys = [set(zip(p["label_fraction"].astype(float), p["seed"].astype(int))) for p in preds.values()]
    common = set.intersection(*keys)
    budgets, seeds = sorted({b for b, _ in common}), sorted({s for _, s in common})
    first = next(iter(preds.values())).drop_duplicates("path").set_index("path")
    paths = sorted(set.intersection(*(set(p["path"]) for p in preds.values())))
    shape = (len(inits), len(budgets), len(seeds))
    prob = np.full((*shape, len(paths)), np.nan, dtype=np.float32)
    for (si, init), (bi, b), (ki, k) in itertools.product(enumerate(inits), enumerate(budgets), enumerate(seeds)):
        p = preds[init]
        g = p[(p["label_fraction"].astype(float) == b) & (p["seed"].astype(int) == k)]
        prob[si, bi, ki] = g.groupby("path")["prob"].mean().reindex(paths).to_numpy()
    valid = np.isfinite(prob).all(axis=-1)[..., None]
    y, slides = first.loc[paths, "y"].to_numpy().astype(int), first.loc[paths, "slide"].to_numpy().astype(str)
    zeros = np.zeros((*shape, 1), dtype=int)
    return Simulation(inits, budgets, seeds, y, slides, np.zeros(len(paths), dtype=int), prob, valid, zeros, zeros)
