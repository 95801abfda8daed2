"""What a selection simulation says, in words and one figure.

The sentence claims an order only where a CI
excludes 0, and names slide-stratified random the default when no strategy beats random."""

from __future__ import annotations

import numpy as np
import pandas as pd

NAMES = {
    "random": "random",
    "stratified": "slide-stratified random",
    "typiclust": "TypiClust",
    "probcover": "ProbCover",
    "kcenter": "k-center (CoreSet)",
    "margin": "margin uncertainty",
}
FALLBACK = "stratified"


def _ci(v: float, lo: float, hi: float) -> str:
    return f"{v:+.3f} (95 % CI {lo:+.3f} to {hi:+.3f})"


def _budgets(bt: pd.DataFrame, name: str, better: bool) -> list[int]:
    t = bt[bt["strategy"] == name]
    hit = t["delta_low"] > 0 if better else t["delta_high"] < 0
    return [int(b) for b in t.loc[hit, "labels"]]


def default_strategy(st: pd.DataFrame) -> str:
    """The strategy whose area under the budget curve beats random by the most with a CI above 0, else
    slide-stratified random."""
    win = st[(st["strategy"] != "random") & (st["aubc_delta_low"] > 0)]
    return str(win.sort_values("aubc_delta", ascending=False)["strategy"].iloc[0]) if len(win) else FALLBACK


def _per_budget(bt: pd.DataFrame, others: list[str]) -> str:
    said = []
    for s in others:
        up, down = _budgets(bt, s, True), _budgets(bt, s, False)
        if up:
            said.append(f"{NAMES[s]} beat random at {', '.join(map(str, up))} labels")
        if down:
            said.append(f"{NAMES[s]} did worse than random at {', '.join(map(str, down))} labels")
    n = len(others) * bt["labels"].nunique()
    return (
        (f"Per budget (CI excluding 0, not adjusted for the {n} comparisons): " + "; ".join(said) + ".")
        if said
        else ("At no single budget did a strategy differ from random with a CI excluding 0.")
    )


def sentence(bt: pd.DataFrame, st: pd.DataFrame, what: str = "") -> str:
    """The result in words: area-under-budget-curve deltas vs random, per-budget claims, one-class shares and the
    default strategy. ``what`` names the data and embedding."""
    lo, hi = int(bt["labels"].min()), int(bt["labels"].max())
    start = int(st["aubc_from_labels"].iloc[0]) if "aubc_from_labels" in st else lo
    others = [s for s in st["strategy"] if s != "random"]
    row = st.set_index("strategy")
    better = [s for s in others if row.at[s, "aubc_delta_low"] > 0]
    worse = [s for s in others if row.at[s, "aubc_delta_high"] < 0]
    same = [s for s in others if s not in better and s not in worse]
    out = [
        f"{what + ': ' if what else ''}area under the AUC-vs-labels curve over {start} to {hi} labels (the budgets "
        "where every strategy had a classifier), relative to random:"
    ]
    for s in better + worse:
        verb = "beat" if s in better else "did worse than"
        need = row.at[s, "labels_to_match_random_at_max"]
        reach = f", reaching random's AUC at {hi} labels with {int(need)}" if np.isfinite(need) else ""
        out.append(
            f"{NAMES[s]} {verb} random, {_ci(row.at[s, 'aubc_delta'], row.at[s, 'aubc_delta_low'], row.at[s, 'aubc_delta_high'])}{reach}."
        )
    if same:
        out.append(f"{', '.join(NAMES[s] for s in same)}: not distinguishable from random (CIs include 0).")
    out.append(_per_budget(bt, others))
    oc = bt[bt["labels"] == lo].set_index("strategy")["one_class_share"]
    out.append(
        f"At {lo} labels, the share of selections holding one class (no classifier: left out of the AUC "
        f"means, counted here) was {', '.join(f'{NAMES[s]} {oc[s]:.0%}' for s in oc.index)}."
    )
    d = default_strategy(st)
    out.append(
        f"Default: {NAMES[d]}."
        if d != FALLBACK or FALLBACK in better
        else "No strategy beat random with a CI excluding 0, so slide-stratified random is the default."
    )
    return " ".join(out)


def figure(bt: pd.DataFrame, title: str = ""):
    """AUC vs labels (95 % bands), paired delta vs random (95 % CIs) and the one-class share, per strategy."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for s, t in bt.groupby("strategy", sort=False):
        x = t["labels"].to_numpy()
        line = ax[0].plot(x, t["auc"], marker="o", label=NAMES.get(s, s))[0]
        ax[0].fill_between(x, t["auc_low"], t["auc_high"], color=line.get_color(), alpha=0.12)
        if s != "random":
            ax[1].plot(x, t["delta_vs_random"], marker="o", color=line.get_color())
            ax[1].fill_between(x, t["delta_low"], t["delta_high"], color=line.get_color(), alpha=0.12)
        ax[2].plot(x, t["one_class_share"], marker="o", color=line.get_color())
    ax[1].axhline(0, color="k", lw=0.8)
    labels = (
        "test AUC (mean over selections with both classes)",
        "AUC - random (paired, 95 % CI)",
        "share of selections with one class",
    )
    for a, lab in zip(ax, labels):
        a.set_xscale("log", base=2)
        a.set_xlabel("labels")
        a.set_ylabel(lab)
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # shown once, where the caller displays it (not again by the notebook's inline backend)
    return fig


def markdown(bt: pd.DataFrame, st: pd.DataFrame) -> str:
    """Two Markdown tables (per strategy; AUC per budget) for README."""
    head = f"| strategy | AUBC ({int(st['aubc_from_labels'].iloc[0])}-{int(bt['labels'].max())} labels) | AUBC - random (95 % CI) | labels to reach random@max | one-class share @min |\n|---|---|---|---|---|\n"
    rows = "".join(
        f"| {NAMES[r.strategy]} | {r.aubc:.3f} | {_ci(r.aubc_delta, r.aubc_delta_low, r.aubc_delta_high)} | "
        f"{'' if not np.isfinite(r.labels_to_match_random_at_max) else int(r.labels_to_match_random_at_max)}"
        f" | {r.one_class_share_at_min:.0%} |\n"
        for r in st.itertuples()
    )
    budgets = sorted(bt["labels"].unique())
    grid = bt.pivot(index="strategy", columns="labels", values="auc").reindex(st["strategy"])
    d = bt.pivot(index="strategy", columns="labels", values="delta_vs_random").reindex(st["strategy"])
    sig = bt.assign(s=(bt["delta_low"] > 0) | (bt["delta_high"] < 0)).pivot(
        index="strategy", columns="labels", values="s"
    )
    h2 = "| strategy | " + " | ".join(map(str, budgets)) + " |\n|---|" + "---|" * len(budgets) + "\n"
    r2 = "".join(
        f"| {NAMES[s]} | "
        + " | ".join(
            f"{grid.at[s, b]:.3f}" + ("" if s == "random" else f" ({d.at[s, b]:+.3f}{'*' if sig.at[s, b] else ''})")
            for b in budgets
        )
        + " |\n"
        for s in grid.index
    )
    return head + rows + "\nAUC per budget (delta vs random; * = 95 % CI excludes 0):\n\n" + h2 + r2
