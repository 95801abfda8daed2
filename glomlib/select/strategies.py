"""Which glomeruli to label next: selection strategies on an embedded pool, with an optional cap per slide.

TypiClust, ProbCover, CoreSet (k-center greedy) and margin uncertainty sampling are scikit-activeml's; random,
slide-stratified random and the per-slide cap are written here. Every strategy picks greedily, so the order of
the picks is a ranking (pick 1 = label first). ``pick`` works on a pool only: rows of test slides are never
handed to it (the caller leaves them out), so no strategy can see them.

``y`` marks the pool's state: -1 unlabelled, 0/1 a known label. Already labelled rows count as covered
(TypiClust, ProbCover, k-center) and train the classifier of ``margin`` (which picks at random, saying so,
until both classes are labelled).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from glomlib.core.errors import ConfigError

STRATEGIES = ("random", "stratified", "typiclust", "probcover", "kcenter", "margin")
MISSING = -1
PROBCOVER_BYTES_PER_PAIR = 11  # float64 distances + three boolean n x n masks (edges, impurity, their product)


class PoolTooLargeError(ConfigError):
    """ProbCover's n x n matrices would not fit the memory limit (exit code 2, the message says what to do)."""


@dataclass
class Picks:
    """Chosen pool indices in pick order, each with the strategy's score and a reason in words."""

    index: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)

    def add(self, i: int, score: float, reason: str) -> None:
        self.index.append(int(i))
        self.score.append(float(score))
        self.reason.append(reason)


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; else physical memory)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_probcover_memory(n: int, limit_gb: float = 0.0) -> None:
    """Refuse (:class:`PoolTooLargeError`) when ProbCover's n x n matrices exceed the limit.

    ``limit_gb`` 0 means half the memory available now."""
    need = PROBCOVER_BYTES_PER_PAIR * n * n
    limit = limit_gb * 1e9 if limit_gb > 0 else available_memory() / 2
    if need > limit:
        raise PoolTooLargeError(
            f"probcover: a pool of {n} glomeruli needs {need / 1e9:.1f} GB for its {n} x {n} distance matrix and "
            f"masks, over the limit of {limit / 1e9:.1f} GB ({'memory_limit_gb' if limit_gb > 0 else 'half the free memory'}). "
            "Use --strategy typiclust (no n x n matrix) or kcenter, select from a smaller manifest, "
            "or raise --memory-limit-gb."
        )


def _stratified(slides: np.ndarray, cand: np.ndarray, n: int, counts: Counter, rng: np.random.Generator) -> Picks:
    """Slide-stratified random: each pick comes from a slide with the fewest picks so far (ties at random)."""
    out, left = Picks(), {s: list(rng.permutation(cand[slides[cand] == s])) for s in np.unique(slides[cand])}
    counts = Counter(counts)
    while len(out.index) < n and left:
        fewest = min(counts[s] for s in left)
        s = rng.choice(sorted(x for x in left if counts[x] == fewest))
        out.add(left[s].pop(), np.nan, f"random pick from slide {s}, one of the slides with fewest picks ({fewest})")
        counts[s] += 1
        if not left[s]:
            del left[s]
    return out


def classifier():
    """The one fixed classifier (also the simulation's): standardised features, balanced L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000))


def _margin(X, y, known, cand, n: int, seed: int) -> Picks:
    """Margin sampling; ``known`` marks the rows whose label ``y`` is known (picks of this batch are not)."""
    from skactiveml.classifier import SklearnClassifier
    from skactiveml.pool import UncertaintySampling

    clf = SklearnClassifier(classifier(), classes=[0, 1], missing_label=MISSING, random_state=seed)
    clf.fit(X[known], y[known])
    qs = UncertaintySampling(method="margin_sampling", missing_label=MISSING, random_state=seed)
    idx, util = qs.query(X, y, clf, fit_clf=False, candidates=cand, batch_size=n, return_utilities=True)
    p = clf.predict_proba(X[idx])[:, 1]
    return Picks(
        list(idx),
        [float(util[k, i]) for k, i in enumerate(idx)],
        [f"the classifier is least sure here (p = {q:.2f})" for q in p],
    )


def _skactiveml(name: str, X, y, cand, n: int, seed: int, state: dict) -> Picks:
    """TypiClust, ProbCover or k-center from scikit-activeml; ``state`` keeps a ProbCover (its radius and
    distances) across calls on the same pool."""
    from skactiveml.pool import CoreSet, ProbCover, TypiClust

    if name == "probcover":
        qs = state.setdefault("probcover", ProbCover(n_classes=2, missing_label=MISSING, random_state=seed))
        text = "covers {:.0f} not yet covered glomeruli within the ProbCover radius"
    elif name == "typiclust":
        qs = TypiClust(missing_label=MISSING, random_state=seed, cluster_algo_dict={"n_init": 1})
        text = "the most typical glomerulus (typicality {:.2f}) of the largest cluster without a labelled member"
    else:
        qs = CoreSet(missing_label=MISSING, random_state=seed)
        text = "the farthest from every labelled or picked glomerulus (distance {:.3f})"
    idx, util = qs.query(X, y, candidates=cand, batch_size=n, return_utilities=True)
    scores = [float(util[k, i]) for k, i in enumerate(idx)]
    reasons = [text.format(s) if np.isfinite(s) else text.split(" (")[0] for s in scores]
    if name == "kcenter" and not (y >= 0).any():
        reasons[0] = "random first pick: nothing is labelled or picked yet"
    return Picks(list(idx), scores, reasons)


def query(name: str, X, y, known, slides, cand, n: int, seed: int, counts: Counter, state: dict) -> Picks:
    """``n`` picks (in order) among the candidate indices ``cand`` of the pool ``X`` by strategy ``name``.

    ``y``: -1 = free, else labelled or already picked; ``known``: rows whose label in ``y`` is real."""
    rng = np.random.default_rng([seed, len(cand)])  # not n: a smaller budget is a prefix of a larger one
    if name == "random":
        return Picks(list(rng.permutation(cand)[:n]), [np.nan] * n, ["random pick"] * n)
    if name == "stratified":
        return _stratified(slides, cand, n, counts, rng)
    if name == "margin":
        if len(np.unique(y[known])) < 2:
            reason = "random pick: margin needs both classes labelled to train its classifier"
            return Picks(list(rng.permutation(cand)[:n]), [np.nan] * n, [reason] * n)
        return _margin(X, y, known, cand, n, seed)
    if name in ("typiclust", "probcover", "kcenter"):
        return _skactiveml(name, X, y, cand, n, seed, state)
    raise ConfigError(f"strategy={name!r}: choose one of {', '.join(STRATEGIES)}.")


def pick(
    name: str,
    X,
    y,
    slides,
    n: int,
    *,
    cap: int = 0,
    seed: int = 0,
    counts: Counter | None = None,
    state: dict | None = None,
    memory_limit_gb: float = 0.0,
) -> Picks:
    """``n`` unlabelled pool rows to label next, ranked, at most ``cap`` picks per slide (0 = no cap).

    ``counts``: picks already made per slide (the cap counts them; simulation rounds pass earlier rounds').
    A pick that would break the cap is skipped and the strategy asked again with the accepted picks marked as
    taken, so greedy strategies stay greedy under the cap."""
    X, y, slides = np.asarray(X), np.asarray(y).astype(int).copy(), np.asarray(slides)
    if name == "probcover":
        check_probcover_memory(len(X), memory_limit_gb)
    counts, state, out, known = Counter(counts or {}), {} if state is None else state, Picks(), y >= 0
    while len(out.index) < n:
        free = y == MISSING
        if cap > 0:
            free &= np.array([counts[s] < cap for s in slides])
        cand = np.flatnonzero(free)
        if len(cand) == 0:
            break
        got = query(name, X, y, known, slides, cand, min(n - len(out.index), len(cand)), seed, counts, state)
        for i, s, r in zip(got.index, got.score, got.reason):
            if cap > 0 and counts[slides[i]] >= cap:
                break  # re-ask with the picks so far taken
            out.add(i, s, r)
            counts[slides[i]] += 1
            y[i] = 0  # taken: covered for the coverage strategies (its label is not used)
    if len(out.index) < n:
        raise ConfigError(
            f"only {len(out.index)} of the budget {n} could be picked: the pool has no more unlabelled glomeruli"
            + (f" on slides under the cap of {cap} per slide; raise --max-per-slide" if cap > 0 else "")
        )
    return out
