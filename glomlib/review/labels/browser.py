"""The widget browser over the review sheet: every click is written into review.csv at once."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from glomlib.core.io import write_csv_atomic
from glomlib.review.explain.browser import live_frontend
from glomlib.review.labels.page import _thumbs
from glomlib.review.labels.reasons import Review


def record_decision(
    csv_path: str | Path, image_id: str, reviewed_label: str | None = None, comment: str | None = None
) -> pd.DataFrame:
    """Write one decision into the review CSV at once (atomic rewrite): the row with ``image_id`` gets
    ``reviewed_label`` and/or ``comment`` (None = leave as is). KeyError when the id is not in the sheet."""
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


def _item_html(r: pd.Series, rr: pd.Series, thumb_size: int) -> tuple[str, str]:
    """(thumbnails, text) of one sheet row ``r`` (``rr``: its ranked row, for the paths and the partner)."""
    esc, size = html.escape, f'width="{thumb_size}" height="{thumb_size}"'
    imgs = f'<img src="{_thumbs([rr["path"]], [rr["mask"]], thumb_size)[0]}" {size}>'
    if str(rr["partner_path"]):
        pt = _thumbs([rr["partner_path"]], [rr["partner_mask"]], thumb_size)[0]
        imgs += f'<img src="{pt}" {size} style="margin-left:6px" title="similar image labelled {esc(str(rr["partner_label"]))}">'
    text = (
        f"<b>#{esc(str(r['rank']))}</b> label <b>{esc(r['label'])}</b>, prob {float(r['prob']):.2f}, slide "
        f"{esc(r['slide'])}<br>{esc(r['reasons'].replace(';', ', ').replace('_', ' '))}<br><small>{esc(r['detail'])}</small>"
    )
    return imgs, text


def _item(w, r: pd.Series, rr: pd.Series, options: list, thumb_size: int, save):
    """One image's box: thumbnails, text, label buttons and comment box; ``save(iid, **decision)`` on change."""
    iid = r["image_id"]
    imgs, text = _item_html(r, rr, thumb_size)
    value = r["reviewed_label"] if r["reviewed_label"] in dict(options).values() else ""
    buttons = w.ToggleButtons(options=options, value=value, description="your label", style={"button_width": "80px"})
    note = w.Text(value=r["comment"], placeholder="comment", continuous_update=False, layout=w.Layout(width="420px"))
    buttons.observe(lambda change: save(iid, reviewed_label=change["new"]), names="value")
    note.observe(lambda change: save(iid, comment=change["new"]), names="value")
    layout = w.Layout(border="1px solid #ddd", padding="6px", margin="4px 0")
    box = w.HBox([w.HTML(imgs), w.VBox([w.HTML(text), buttons, note])], layout=layout)
    box.add_class("glomlib-review-item")
    box.add_class(f"glomlib-review-{iid}")
    return box


def review_browser(review: Review, csv_path: str | Path, page_size: int = 8, thumb_size: int = 160):
    """An ipywidgets browser over the review sheet: per image the thumbnail (with the similar image of the other
    label, if any), its label, probability and reasons, one button per label (plus ``unsure`` and ``-`` to
    clear) and a comment box. Every click or comment is written into ``csv_path`` immediately, so nothing is
    lost when the notebook is closed. Each item's box carries the CSS class ``glomlib-review-<image_id>``."""
    import ipywidgets as w

    csv_path = Path(csv_path)
    ranked = review.ranked.set_index("image_id")
    labels = [str(review.items.attrs.get(k, "")) for k in ("positive_label", "negative_label")]
    labels = [x for x in labels if x] or sorted(set(review.items["label"].astype(str)))
    options = [("-", ""), *[(x, x) for x in labels], ("unsure", "unsure")]
    status, out, info, state = w.HTML(), w.VBox(), w.Label(), {"page": 0}
    pages = max(1, -(-len(pd.read_csv(csv_path, dtype=str, keep_default_na=False)) // page_size))

    def save(iid: str, reviewed_label: str | None = None, comment: str | None = None) -> None:
        record_decision(csv_path, iid, reviewed_label=reviewed_label, comment=comment)
        esc = html.escape
        status.value = (
            f"saved comment for {esc(iid)}"
            if comment is not None
            else f"saved: {esc(iid)} &rarr; {esc(reviewed_label or '(cleared)')}"
        )

    def render() -> None:
        cur = pd.read_csv(csv_path, dtype=str, keep_default_na=False)  # decisions already made show as set
        chunk = cur.iloc[state["page"] * page_size : (state["page"] + 1) * page_size]
        out.children = [_item(w, r, ranked.loc[r["image_id"]], options, thumb_size, save) for _, r in chunk.iterrows()]
        done = int((cur["reviewed_label"] != "").sum())
        info.value = f"page {state['page'] + 1}/{pages} - {done} of {len(cur)} reviewed - saving to {csv_path.name}"

    def step(delta: int):
        return lambda _: (state.update(page=min(pages - 1, max(0, state["page"] + delta))), render())

    prev_b, next_b = w.Button(description="< previous"), w.Button(description="next >")
    prev_b.on_click(step(-1))
    next_b.on_click(step(+1))
    render()
    return w.VBox([w.HBox([prev_b, next_b, info]), out, status])


def show_review(review: Review, paths: Mapping[str, Path], interactive: bool = True) -> str:
    """The widget browser in a live JupyterLab kernel; otherwise (papermill, HTML report) a pointer to the
    self-contained page and the CSV. Returns "widget" or "static"."""
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
