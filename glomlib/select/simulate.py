"""Does a selection strategy beat random labelling? A simulation on a labelled manifest.

For each slide-grouped fold the pool is the training slides (the test slides are never shown to a strategy),
labels start hidden, and each strategy picks in rounds up to the budgets (2, 4, ... 128: each round adds picks
to the earlier ones, as a lab would, and sees the labels picked so far). After every round one fixed classifier
(``strategies.classifier``: balanced logistic regression on the frozen embedding, never tuned on the tiny sets)
is trained on the picks and scores the test slides. A selection holding one class has no classifier: it gets no
AUC, is counted in ``one_class`` and left out of the AUC means (``stats`` says how often, per budget).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from glomlib.data.splits import nested_subset
from glomlib.select.embed import reduce
from glomlib.select.strategies import check_probcover_memory, classifier, pick

BUDGETS = (2, 4, 8, 16, 32, 64, 128)


@dataclass
class Simulation:
    """Test-slide probabilities ``prob[strategy, budget, seed, image]`` (NaN where the image is not in that
    fold's test slides or the selection held one class) and ``valid[strategy, budget, seed, fold]``."""

    strategies: list[str]
    budgets: list[int]
    seeds: list[int]
    y: np.ndarray
    slides: np.ndarray
    folds: np.ndarray
    prob: np.ndarray
    valid: np.ndarray
    n_pos_picked: np.ndarray  # [strategy, budget, seed, fold]
    slides_picked: np.ndarray  # [strategy, budget, seed, fold]: distinct slides among the picks
    seconds: dict[str, float] = field(default_factory=dict)


def run_rounds(
    strategy: str,
    Xp: np.ndarray,
    yp: np.ndarray,
    slides_p: np.ndarray,
    budgets,
    seed: int,
    cap: int = 0,
    memory_limit_gb: float = 0.0,
):
    """Yield ``(budget, picked pool indices)`` after each round: nested picks, the labels of earlier rounds known."""
    ystate = np.full(len(yp), -1)
    state: dict = {}
    for b in budgets:
        have = int((ystate >= 0).sum())
        if b > have:
            counts = Counter(slides_p[ystate >= 0])
            p = pick(
                strategy,
                Xp,
                ystate,
                slides_p,
                b - have,
                cap=cap,
                seed=seed,
                counts=counts,
                state=state,
                memory_limit_gb=memory_limit_gb,
            )
            ystate[p.index] = yp[p.index]
        yield b, np.flatnonzero(ystate >= 0)


def _one_fold(sim: Simulation, X: np.ndarray, f: int, dims: int, cap: int, memory_limit_gb: float) -> None:
    pool, test = np.flatnonzero((sim.folds >= 0) & (sim.folds != f)), np.flatnonzero(sim.folds == f)
    Xp = reduce(X, dims, pool)[pool]
    yp, sp = sim.y[pool], sim.slides[pool]
    for si, strategy in enumerate(sim.strategies):
        t0 = time.perf_counter()
        for ki, seed in enumerate(sim.seeds):
            for bi, (_, sel) in enumerate(
                run_rounds(strategy, Xp, yp, sp, sim.budgets, 1000 * seed + f, cap, memory_limit_gb)
            ):
                sim.n_pos_picked[si, bi, ki, f] = int(yp[sel].sum())
                sim.slides_picked[si, bi, ki, f] = len(set(sp[sel]))
                if len(np.unique(yp[sel])) < 2:
                    continue  # one class: no classifier, no AUC (counted by `valid`)
                clf = classifier().fit(X[pool[sel]], yp[sel])
                sim.prob[si, bi, ki, test] = clf.predict_proba(X[test])[:, 1]
                sim.valid[si, bi, ki, f] = True
        sim.seconds[strategy] = sim.seconds.get(strategy, 0.0) + time.perf_counter() - t0
        print(f"fold {f}: {strategy} {len(sim.seeds)} seeds in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def simulate(
    X: np.ndarray,
    y: np.ndarray,
    slides: np.ndarray,
    folds: np.ndarray,
    strategies,
    budgets=BUDGETS,
    seeds: int = 20,
    cap: int = 0,
    dims: int = 64,
    memory_limit_gb: float = 0.0,
) -> Simulation:
    """Run every strategy on every fold (rows with ``folds == -1``, e.g. split=test or unlabelled, take no part)
    for ``seeds`` seeds. ``X``: the frozen embedding (the classifier's input); strategies see its ``dims``-
    component PCA fitted on the pool. Single-threaded BLAS: many small problems run faster that way."""
    import skactiveml.pool  # noqa: F401  (loads scikit-learn's OpenMP before it is limited below)
    from threadpoolctl import threadpool_limits

    y, slides, folds = np.asarray(y).astype(int), np.asarray(slides).astype(str), np.asarray(folds).astype(int)
    budgets, strategies = sorted(int(b) for b in budgets), list(strategies)
    fold_ids = sorted(int(f) for f in np.unique(folds[folds >= 0]))
    assert fold_ids == list(range(len(fold_ids))), f"folds must be numbered 0..k-1, not {fold_ids}"
    if "probcover" in strategies:
        check_probcover_memory(int(max(((folds >= 0) & (folds != f)).sum() for f in fold_ids)), memory_limit_gb)
    shape = (len(strategies), len(budgets), seeds)
    sim = Simulation(
        strategies,
        budgets,
        list(range(seeds)),
        y,
        slides,
        folds,
        prob=np.full((*shape, len(y)), np.nan, dtype=np.float32),
        valid=np.zeros((*shape, len(fold_ids)), dtype=bool),
        n_pos_picked=np.zeros((*shape, len(fold_ids)), dtype=int),
        slides_picked=np.zeros((*shape, len(fold_ids)), dtype=int),
    )
    with threadpool_limits(limits=1):
        for f in fold_ids:
            _one_fold(sim, X, f, dims, cap, memory_limit_gb)
    return sim


def budget_probe(X: dict[str, np.ndarray], y, slides, folds, budgets, seeds: int = 50, dims: int = 64) -> Simulation:
    """The frozen linear probe of notebook 04's label budgets: per seed and test fold the nested class-stratified
    subset of the training folds (``nested_subset`` seeded by ``1000 * seed + fold``, as fine-tuning draws it)
    trains the fixed ``classifier`` on each init's embedding ``X[init]``: the same images and subsets for every
    init (paired). ``Simulation.strategies`` are the inits; every seed's test folds are pooled (``folds`` 0 for
    CV rows); a (budget, seed) where some fold's subset held one class is not ``valid``. The classifier sees the
    ``dims``-component PCA fitted on the fold's pool (no labels; 0 = the embedding as it is), as in ``simulate``."""
    from threadpoolctl import threadpool_limits

    inits, y, slides, folds = list(X), np.asarray(y).astype(int), np.asarray(slides).astype(str), np.asarray(folds)
    shape = (len(inits), len(budgets), seeds)
    n = np.zeros((*shape, 1), dtype=int)
    sim = Simulation(
        inits,
        list(budgets),
        list(range(seeds)),
        y,
        slides,
        np.where(folds >= 0, 0, -1),
        np.full((*shape, len(y)), np.nan, dtype=np.float32),
        np.ones((*shape, 1), dtype=bool),
        n,
        n.copy(),
    )
    with threadpool_limits(limits=1):
        for k in sorted(int(f) for f in np.unique(folds[folds >= 0])):
            pool, test = np.flatnonzero((folds >= 0) & (folds != k)), np.flatnonzero(folds == k)
            Z = {init: reduce(x, dims, pool) for init, x in X.items()}
            for ki, bi in np.ndindex(seeds, len(budgets)):
                sel = pool[nested_subset(y[pool], budgets[bi], 1000 * ki + k)]
                sim.n_pos_picked[:, bi, ki, 0] += int(y[sel].sum())
                sim.slides_picked[:, bi, ki, 0] += len(set(slides[sel]))  # summed over the folds, as n_pos_picked
                if len(np.unique(y[sel])) < 2:
                    sim.valid[:, bi, ki, 0] = False
                    continue
                for si, init in enumerate(inits):
                    clf = classifier().fit(Z[init][sel], y[sel])
                    sim.prob[si, bi, ki, test] = clf.predict_proba(Z[init][test])[:, 1]
    return sim
