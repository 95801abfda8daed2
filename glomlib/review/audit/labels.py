"""Notebook 01's label section: the review record and the raters' agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from IPython.display import Markdown, display

from glomlib.data.raters import agreement_report, rater_columns


def label_changes(df: pd.DataFrame) -> pd.DataFrame:
    """Rows a label review touched (``glomlib data apply-review`` records ``review_*`` columns): path, slide,
    label before and now, decision (changed / confirmed / unsure), reviewer, date, comment. Empty when the
    manifest carries no review record."""
    cols = ["row", "path", "slide", "label_before", "label", "decision", "reviewer", "date", "comment"]
    if "review_decision" not in df.columns:
        return pd.DataFrame(columns=cols)
    d = df[df["review_decision"].astype(str) != ""]
    return pd.DataFrame(
        {
            "row": d["row"] if "row" in d else d.index + 1,
            "path": d["path"],
            "slide": d["slide"],
            "label_before": d["review_label_before"],
            "label": d["label"],
            "decision": d["review_decision"],
            "reviewer": d["review_reviewer"],
            "date": d["review_date"],
            "comment": d["review_comment"],
        },
        columns=cols,
    )


def show_labels(df: pd.DataFrame, out: str | Path | None = None) -> dict[str, Any]:
    """Notebook 01's label section: the review record (which labels changed, by whom, when) and, with several
    ``label_<rater>`` columns, the raters' agreement (pairwise Cohen's kappa, Fleiss' kappa, per centre, ties).
    Displays the tables, writes ``label_changes.csv`` / ``rater_*.csv`` into ``out``; returns what it found."""
    res: dict[str, Any] = {"changes": label_changes(df)}
    ch = res["changes"]
    if len(ch):
        n = ch["decision"].value_counts().to_dict()
        display(
            Markdown(
                f"**Label review record:** {len(ch)} image(s) reviewed — {n.get('changed', 0)} label(s) "
                f"changed, {n.get('confirmed', 0)} confirmed, {n.get('unsure', 0)} unsure."
            )
        )
        display(ch.drop(columns=["path"]))
    else:
        display(Markdown("No label review is recorded in this manifest (`glomlib data apply-review` adds one)."))
    cols = rater_columns(df)
    if len(cols) >= 2:
        rep = agreement_report(df, cols)
        res["raters"] = rep
        display(
            Markdown(
                f"**{len(cols)} raters** ({', '.join(rep['raters'])}). Fleiss' kappa over the "
                f"{rep['fleiss']['n']} images every rater labelled: **{rep['fleiss']['kappa']:.3f}**; "
                f"{int(rep['consensus']['tie'].sum())} image(s) without a majority (ties)."
            )
        )
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
