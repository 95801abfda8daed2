"""The widget browser over the review sheet: every click is written into review.csv at once."""

from __future__ import annotations

import argparse
import html
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from glomlib.core.config import add_config_arguments, config_from_args
from glomlib.review.explain.browser import live_frontend
from glomlib.review.labels.config import ReviewConfig
from glomlib.review.labels.page import _thumbs, run_review
from glomlib.review.labels.reasons import REASONS, Review


def record_decision(
    csv_path: str | Path, image_id: str, reviewed_label: str | None = None, comment: str | None = None
) -> pd.DataFrame:
    """Write one decision into the review CSV at once (atomic rewrite): the row with ``image_id`` gets
    ``reviewed_label`` and/or ``comment`` (None = leave as is). KeyError when the id is not in the sheet."""
    from glomlib.core.io import write_csv_atomic

    t = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    hit = t["image_id"] == image_id
    if not hit.any():
        raise KeyError(f"image_id {image_id} is not in {csv_path}")
    if reviewed_label is not None:
        t.loc[hit, "reviewed_label"] = reviewed_label
    if comment is not None:
        t.loc[hit, "comment"] = comment
    write_csv_atomic(t, csv_path)
    return t


def review_browser(review: Review, csv_path: str | Path, page_size: int = 8, thumb_size: int = 160):
    """An ipywidgets browser over the review sheet: per image the thumbnail (with the similar image of the other
    label, if any), its label, probability and reasons, one button per label (plus ``unsure`` and ``-`` to
    clear) and a comment box. Every click or comment is written into ``csv_path`` immediately, so nothing is
    lost when the notebook is closed. Each item's box carries the CSS class ``glomlib-review-<image_id>``."""
    import ipywidgets as w

    csv_path = Path(csv_path)
    sheet = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    ranked = review.ranked.set_index("image_id")
    labels = [str(review.items.attrs.get("positive_label", "")), str(review.items.attrs.get("negative_label", ""))]
    labels = [x for x in labels if x] or sorted(set(review.items["label"].astype(str)))
    options = [("-", ""), *[(x, x) for x in labels], ("unsure", "unsure")]
    status = w.HTML()
    out = w.VBox()
    state = {"page": 0}
    pages = max(1, -(-len(sheet) // page_size))

    def item(r: pd.Series) -> w.Widget:
        iid = r["image_id"]
        rr = ranked.loc[iid]
        thumb = _thumbs([rr["path"]], [rr["mask"]], thumb_size)[0]
        imgs = f'<img src="{thumb}" width="{thumb_size}" height="{thumb_size}">'
        if str(rr["partner_path"]):
            pt = _thumbs([rr["partner_path"]], [rr["partner_mask"]], thumb_size)[0]
            imgs += (
                f'<img src="{pt}" width="{thumb_size}" height="{thumb_size}" style="margin-left:6px" '
                f'title="similar image labelled {html.escape(str(rr["partner_label"]))}">'
            )
        text = (
            f"<b>#{html.escape(str(r['rank']))}</b> label <b>{html.escape(r['label'])}</b>, "
            f"prob {float(r['prob']):.2f}, slide {html.escape(r['slide'])}<br>"
            f"{html.escape(r['reasons'].replace(';', ', ').replace('_', ' '))}<br>"
            f"<small>{html.escape(r['detail'])}</small>"
        )
        buttons = w.ToggleButtons(
            options=options,
            value=r["reviewed_label"] if r["reviewed_label"] in dict(options).values() else "",
            description="your label",
            style={"button_width": "80px"},
        )
        note = w.Text(
            value=r["comment"], placeholder="comment", continuous_update=False, layout=w.Layout(width="420px")
        )

        def on_label(change, iid=iid):
            record_decision(csv_path, iid, reviewed_label=change["new"])
            status.value = f"saved: {html.escape(iid)} &rarr; {html.escape(change['new'] or '(cleared)')}"

        def on_note(change, iid=iid):
            record_decision(csv_path, iid, comment=change["new"])
            status.value = f"saved comment for {html.escape(iid)}"

        buttons.observe(on_label, names="value")
        note.observe(on_note, names="value")
        box = w.HBox(
            [w.HTML(imgs), w.VBox([w.HTML(text), buttons, note])],
            layout=w.Layout(border="1px solid #ddd", padding="6px", margin="4px 0"),
        )
        box.add_class("glomlib-review-item")
        box.add_class(f"glomlib-review-{iid}")
        return box

    prev_b, next_b, info = w.Button(description="< previous"), w.Button(description="next >"), w.Label()

    def render() -> None:
        cur = pd.read_csv(csv_path, dtype=str, keep_default_na=False)  # decisions already made show as set
        chunk = cur.iloc[state["page"] * page_size : (state["page"] + 1) * page_size]
        out.children = [item(r) for _, r in chunk.iterrows()]
        done = int((cur["reviewed_label"] != "").sum())
        info.value = f"page {state['page'] + 1}/{pages} - {done} of {len(cur)} reviewed - saving to {csv_path.name}"

    def step(delta: int):
        def f(_):
            state["page"] = min(pages - 1, max(0, state["page"] + delta))
            render()

        return f

    prev_b.on_click(step(-1))
    next_b.on_click(step(+1))
    render()
    return w.VBox([w.HBox([prev_b, next_b, info]), out, status])


def show_review(review: Review, paths: Mapping[str, Path], interactive: bool = True) -> str:
    """The widget browser in a live JupyterLab kernel; otherwise (papermill, HTML report) a pointer to the
    self-contained page and the CSV. Returns "widget" or "static"."""
    from IPython.display import Markdown, display

    if live_frontend(interactive):
        display(review_browser(review, paths["csv"]))
        return "widget"
    display(
        Markdown(
            f"{len(review.ranked)} images flagged. Review page: `{paths['html']}` (open it in a browser); "
            f"write decisions into `{paths['csv']}` (column `reviewed_label`), or open this notebook in "
            "JupyterLab and click them."
        )
    )
    return "static"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "review", help="label review sheet (HTML + CSV) from a fine-tune run", description=__doc__.splitlines()[0]
    )
    add_config_arguments(p, ReviewConfig)

    def _run(args: argparse.Namespace) -> int:
        cfg = config_from_args(ReviewConfig, args)
        review, paths = run_review(cfg)
        counts = {x: int(review.ranked["reasons"].str.contains(x).sum()) for x in REASONS}
        print(f"{len(review.ranked)} of {len(review.items)} images flagged: {counts}")
        for k, v in paths.items():
            print(f"{k:>5}: {v}")
        return 0

    p.set_defaults(func=_run)
