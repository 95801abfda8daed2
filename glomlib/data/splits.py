"""Slide-grouped (patient-grouped) stratified cross-validation folds.

Patches of one slide are near-duplicates in stain and tissue, so a slide (or patient) on both sides of a split
inflates every metric: folds are built over groups (slides and patients that share rows merged into one) with
:class:`sklearn.model_selection.StratifiedGroupKFold`, deterministic for a seed. The manifest's ``split`` column
is honoured: ``""``/``train``/``val`` rows are cross-validated (``val`` rows are the inner validation set when
present), ``test`` rows and unlabeled rows get fold ``-1``, and a number puts the row in that fold (all CV rows
or none).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


class SplitError(ValueError):
    """The data cannot be split as asked; the message says why and what to change."""

    exit_code = 1  # glomlib.cli's exit-code table


def groups_of(df: pd.DataFrame) -> np.ndarray:
    """Group label per row: connected components of (slide, patient) pairs, named after their first patient."""
    slides = df["slide"].astype(str).to_numpy()
    patients = df["patient"].astype(str).to_numpy() if "patient" in df.columns else slides
    patients = np.where(patients == "", slides, patients)
    if np.array_equal(slides, patients):
        return slides.astype(object)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    s_code, s_names = pd.factorize(slides)
    p_code = pd.factorize(patients)[0] + len(s_names)
    n = p_code.max() + 1
    _, comp = connected_components(coo_matrix((np.ones(len(slides)), (s_code, p_code)), shape=(n, n)), directed=False)
    first = pd.Series(patients).groupby(comp[s_code]).transform("first")
    return first.to_numpy(dtype=object)


def _y_split(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``y`` (0 when absent), ``split`` (lower case, "" when absent) and the cross-validated rows."""
    n = len(df)
    y = df["y"].to_numpy().astype(int) if "y" in df.columns else np.zeros(n, dtype=int)
    split = df["split"].astype(str).str.strip().str.lower().to_numpy() if "split" in df.columns else np.full(n, "")
    return y, split, (split != "test") & (y >= 0)


def _group_kind(df: pd.DataFrame) -> str:
    if "patient" in df.columns and not (df["patient"].astype(str) == df["slide"].astype(str)).all():
        return "patient"
    return "slide"


CV_UNITS = ("slide", "center", "centre")


def _fold_problems(g: np.ndarray, yc: np.ndarray, n_folds: int, kind: str) -> list[str]:
    out = []
    classes = np.unique(yc)
    if len(classes) < 2:
        name = {1: "positive", 0: "negative"}.get(int(classes[0]), "?") if len(classes) else ""
        out.append(
            f"only one class: every labeled row is {name} (y={int(classes[0])}); a classifier needs both the positive and the negative label. Check the labels and positive_label."
            if len(classes)
            else "no labeled rows."
        )
    n_groups = len(set(g))
    if n_groups < n_folds:
        out.append(
            f"only {n_groups} {kind}s to split into {n_folds} folds; every fold needs its own {kind}s. Use n_folds <= {n_groups} or add data from more {kind}s."
        )
    for cls in classes if len(classes) > 1 else ():
        k = len(set(g[yc == cls]))
        if k < n_folds:
            name = "positive" if cls == 1 else "negative"
            out.append(
                f"the {name} class (y={cls}) occurs in only {k} {kind}(s), fewer than n_folds={n_folds}: some test folds would have none. Use n_folds <= {k}."
            )
    return out


def fold_problems(df: pd.DataFrame, n_folds: int) -> list[str]:
    """Why slide-grouped ``n_folds``-fold cross-validation of ``df`` is impossible (empty list: it is possible):
    one class only, fewer slides (patients) than folds, a class on fewer slides than folds. ``glomlib data
    check`` reports these before any training; :func:`assign_folds` raises them."""
    y, split, cv = _y_split(df)
    if not cv.any():
        return ["no labeled rows outside split=test; nothing to cross-validate"]
    if (np.array([s.isdigit() for s in split]) & cv).any():
        return []  # fold numbers given in the split column
    return _fold_problems(groups_of(df)[cv], y[cv], int(n_folds), _group_kind(df))


def assign_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 0, by: str = "slide") -> np.ndarray:
    """Fold number (0..n_folds-1) per row, or -1 for ``split == "test"`` and unlabeled rows.

    ``by="slide"``: slide-grouped (patient-grouped when patients differ from slides), stratified by ``y``,
    deterministic. Raises :class:`SplitError` when there are fewer groups than folds, or a class occurs in
    fewer groups than folds (some test fold would have no example of it).
    ``by="center"`` (or ``"centre"``): leave-one-centre-out — fold k is the k-th centre in sorted order, so
    ``n_folds`` must equal the number of centres; ``seed`` plays no part.
    """
    if by not in CV_UNITS:
        raise SplitError(f"by={by!r}: choose 'slide' (slide/patient-grouped folds) or 'center' (leave one centre out)")
    if by != "slide":
        return _centre_folds(df, n_folds)
    if n_folds < 2:
        raise SplitError(f"n_folds must be at least 2, not {n_folds}")
    folds = np.full(len(df), -1, dtype=int)
    y, split, cv = _y_split(df)
    groups, kind = groups_of(df), _group_kind(df)
    if not cv.any():
        raise SplitError("no labeled rows outside split=test; nothing to cross-validate")
    explicit = np.array([s.isdigit() for s in split]) & cv
    if explicit.any():
        if not explicit[cv].all():
            bad = np.flatnonzero(cv & ~explicit)[:10]
            raise SplitError(
                f"the split column gives fold numbers for some rows but not others (e.g. rows {[int(i) + 1 for i in bad]}); give every CV row a fold number or none"
            )
        given = np.array([int(s) for s in split[cv]])
        if given.max() >= n_folds:
            raise SplitError(f"split column uses fold {given.max()} but n_folds={n_folds}")
        folds[cv] = given
    else:
        from sklearn.model_selection import StratifiedGroupKFold

        g = groups[cv]
        yc = y[cv]
        problems = _fold_problems(g, yc, n_folds, kind)
        if problems:
            raise SplitError(" ".join(problems))
        sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        idx = np.flatnonzero(cv)
        for f, (_, te) in enumerate(sgkf.split(np.zeros(len(idx)), yc, g)):
            folds[idx[te]] = f
    # no group on both sides of any split
    per_group = pd.Series(folds[cv]).groupby(groups[cv]).nunique()
    assert (per_group == 1).all(), f"{kind}s in several folds: {list(per_group[per_group > 1].index)}"
    test_groups = set(groups[split == "test"])
    leaked = test_groups & set(groups[cv])
    if leaked:
        raise SplitError(
            f"{kind}(s) {sorted(leaked)[:10]} have rows in split=test and in the CV data; all rows of a {kind} must be in the same split"
        )
    return folds


def _centre_folds(df: pd.DataFrame, n_folds: int) -> np.ndarray:
    """Leave-one-centre-out folds (see :func:`assign_folds`)."""
    if "center" not in df.columns or df["center"].astype(str).str.strip().eq("").all():
        raise SplitError("cv by centre needs a 'center' column in the manifest (centre / scanner / lab of each row)")
    y, split, cv = _y_split(df)
    centre = df["center"].astype(str).str.strip().to_numpy()
    empty = np.flatnonzero(cv & (centre == ""))
    if len(empty):
        raise SplitError(
            f"{len(empty)} row(s) have no center (e.g. rows {[int(i) + 1 for i in empty[:10]]}); every row needs its centre for leave-one-centre-out cross-validation"
        )
    names = sorted(set(centre[cv]))
    if len(names) < 2:
        raise SplitError(f"leave-one-centre-out needs at least 2 centres; the manifest has {names}")
    if n_folds != len(names):
        raise SplitError(
            f"leave-one-centre-out makes one fold per centre: {len(names)} centres {names}, but n_folds={n_folds}; set folds={len(names)}"
        )
    groups = groups_of(df)
    per_group = pd.Series(centre[cv]).groupby(groups[cv]).nunique()
    if (per_group > 1).any():
        raise SplitError(
            f"{_group_kind(df)}(s) {list(per_group[per_group > 1].index)[:10]} have rows in several centres; a slide or patient belongs to one centre"
        )
    folds = np.full(len(df), -1, dtype=int)
    folds[cv] = [names.index(c) for c in centre[cv]]
    return folds


def inner_validation(df_train: pd.DataFrame, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask over ``df_train``: True = inner validation row (e.g. early stopping), grouped by slide/patient.

    Rows with ``split == "val"`` are used when present; otherwise about ``fraction`` of the groups are drawn
    with StratifiedGroupKFold (deterministic by seed). Never puts one group on both sides.
    """
    y, split, _ = _y_split(df_train)
    if (split == "val").any():
        return split == "val"
    if not 0 < fraction < 1:
        raise SplitError(f"fraction must be between 0 and 1, not {fraction}")
    groups = groups_of(df_train)
    ug = np.unique(groups)
    if len(ug) < 2:
        raise SplitError(
            f"inner validation needs at least 2 {_group_kind(df_train)}s in the training data, found {len(ug)}"
        )
    from sklearn.model_selection import StratifiedGroupKFold

    k = int(min(max(2, round(1 / fraction)), len(ug)))
    n = len(df_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only ... members"
        _, te = next(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n), y, groups))
    mask = np.zeros(n, dtype=bool)
    mask[te] = True
    assert not (set(groups[mask]) & set(groups[~mask])), "a group is on both sides of the inner split"
    return mask


def fold_table(df: pd.DataFrame, folds: np.ndarray) -> pd.DataFrame:
    """One row per slide: slide, patient, center, fold, n (images), n_pos (positives); sorted by fold, slide."""
    folds = np.asarray(folds)
    if len(folds) != len(df):
        raise ValueError(f"{len(folds)} folds for {len(df)} rows")
    t = pd.DataFrame(
        {
            "slide": df["slide"].astype(str).to_numpy(),
            "patient": (df["patient"] if "patient" in df.columns else df["slide"]).astype(str).to_numpy(),
            "center": (df["center"] if "center" in df.columns else pd.Series([""] * len(df))).astype(str).to_numpy(),
            "fold": folds.astype(int),
            "pos": (df["y"].to_numpy() == 1).astype(int) if "y" in df.columns else np.zeros(len(df), dtype=int),
        }
    )
    out = (
        t.groupby(["slide", "patient", "center", "fold"], sort=False)
        .agg(n=("pos", "size"), n_pos=("pos", "sum"))
        .reset_index()
    )
    return out.sort_values(["fold", "slide"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- label budgets
def nested_subset(y, budget: float, seed: int) -> np.ndarray:
    """Boolean mask over ``y`` (0/1): the first images of one fixed random order per class, seeded by ``seed``
    only, so a smaller budget is always a subset of a larger one. ``budget``: a share (at least 2 per class) or
    ``-N`` (N per class, or all a class has)."""
    y, v = np.asarray(y).astype(int), float(budget)
    keep = np.zeros(len(y), dtype=bool)
    rng = np.random.default_rng(10_007 + seed)
    for c in (0, 1):
        order = rng.permutation(np.flatnonzero(y == c))
        n = int(-v) if v < 0 else max(2, int(round(v * len(order)))) if v < 1 else len(order)
        keep[order[:n]] = True
    return keep
