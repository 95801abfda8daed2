"""The review sheet: review.csv for the pathologist and the self-contained review.html."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from glomlib.core import io as runs
from glomlib.core.io import publish_new, write_csv_new
from glomlib.core.runs import resolve_run
from glomlib.data.images import read_mask, read_rgb
from glomlib.review.labels.config import ReviewConfig, load_review_inputs
from glomlib.review.labels.reasons import REASON_TEXT, REASONS, Review, build_review

REVIEW_COLUMNS = (
    "rank image_id path slide center label prob p_given_label score reasons detail partner_image_id partner_path "
    "partner_label similarity reviewed_label comment"
).split()


def thumbnail_png(image: np.ndarray, mask: np.ndarray | None = None, colour=(255, 221, 0)) -> str:
    """A uint8 RGB thumbnail as a base64 PNG data URI, with the mask outline drawn when a mask is given."""
    img = np.ascontiguousarray(np.asarray(image, np.uint8)).copy()
    if mask is not None and np.any(mask):
        m = (np.asarray(mask) > 0).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, colour, max(1, img.shape[0] // 100))
    ok, buf = cv2.imencode(".png", img[:, :, ::-1])
    if not ok:
        raise ValueError("could not encode a thumbnail as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _thumbs(paths: Sequence[str], masks: Sequence[str], size: int) -> list[str]:
    """Thumbnails as data URIs (decoded directly: a page of thumbnails is not worth a cache entry)."""
    return [thumbnail_png(read_rgb(str(p), size), read_mask(str(m), size) if m else None) for p, m in zip(paths, masks)]


def review_table(
    review: Review, n_items: int = 60, slide_names: Mapping[str, str] | None = None, show_paths: bool = True
) -> pd.DataFrame:
    """The CSV for the pathologist: the ``n_items`` most suspicious images (``REVIEW_COLUMNS``), with empty
    ``reviewed_label`` and ``comment``. ``slide_names`` replaces slide IDs; ``show_paths=False`` empties paths."""
    r = review.ranked.head(n_items).copy()
    if slide_names is not None:
        r["slide"] = [slide_names.get(s, s) for s in r["slide"]]
    if not show_paths:
        r["path"] = ""
        r["partner_path"] = ""
    r["reviewed_label"] = ""
    r["comment"] = ""
    r["prob"] = r["prob"].astype(float).round(4)
    return r[REVIEW_COLUMNS]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} p.note{color:#555;font-size:14px;max-width:900px}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:6px 8px;vertical-align:top;
font-size:13px;text-align:left} th{background:#f4f4f4;position:sticky;top:0}
td.img img{display:block;border:1px solid #ccc} .reason{display:inline-block;background:#fde2d4;border-radius:3px;
padding:1px 5px;margin:1px 2px 1px 0;font-size:12px} .lab{font-weight:600} .small{color:#666;font-size:12px}
td.fill{min-width:120px;color:#aaa}
"""


def _partner_html(r: pd.Series, items: pd.DataFrame, thumb: str, size: str, slide_names) -> str:
    esc, pid = html.escape, r["partner_image_id"]
    pslide = str(items.at[pid, "slide"]) if pid in items.index else ""
    pslide = slide_names.get(pslide, pslide) if slide_names is not None else pslide
    return (
        f'<img src="{thumb}" {size} alt="partner {esc(pid)}"><div class="small">{esc(pid)}<br>labelled <span '
        f'class="lab">{esc(str(r["partner_label"]))}</span><br>slide {esc(pslide)}<br>similarity '
        f"{float(r['similarity']):.3f}</div>"
    )


def _row_html(t, thumb: str, partner: str, size: str) -> str:
    """One table row: rank, image, label, probability, reasons, slide, the similar image, an empty cell."""
    esc = html.escape
    reasons = "".join(
        f'<span class="reason" title="{esc(REASON_TEXT[x])}">{esc(x.replace("_", " "))}</span>'
        for x in str(t.reasons).split(";")
        if x
    )
    name = f"<br>{esc(Path(str(t.path)).name)}" if t.path else ""
    return (
        f'<tr><td>{t.rank}</td><td class="img"><img src="{thumb}" {size} alt="image {esc(t.image_id)}">'
        f'<div class="small">{esc(t.image_id)}{name}</div></td><td><span class="lab">{esc(str(t.label))}</span></td>'
        f'<td>{float(t.prob):.2f}<div class="small">p(given label) {float(t.p_given_label):.2f}</div></td>'
        f'<td>{reasons}<div class="small">{esc(str(t.detail))}</div></td>'
        f'<td>{esc(str(t.slide))}<div class="small">{esc(str(t.center))}</div></td>'
        f'<td class="img">{partner}</td><td class="fill"></td></tr>'
    )


def review_html(
    review: Review,
    table: pd.DataFrame,
    *,
    thumb_size: int = 160,
    title: str = "Label review",
    subtitle: str = "",
    slide_names: Mapping[str, str] | None = None,
) -> str:
    """A self-contained HTML page (inline CSS, base64 thumbnails, no scripts) listing ``table``'s rows."""
    rows = review.ranked.set_index("image_id").loc[list(table["image_id"])]
    size, esc, items = f'width="{thumb_size}" height="{thumb_size}"', html.escape, review.items.set_index("image_id")
    thumbs = _thumbs(rows["path"].tolist(), rows["mask"].tolist(), thumb_size)
    partner = (rows["partner_path"].astype(str) != "").to_numpy()
    pthumbs = iter(_thumbs(rows["partner_path"][partner].tolist(), rows["partner_mask"][partner].tolist(), thumb_size))
    body = [
        _row_html(
            t,
            thumbs[k],
            _partner_html(rows.iloc[k], items, next(pthumbs), size, slide_names) if partner[k] else "",
            size,
        )
        for k, t in enumerate(table.itertuples(index=False))
    ]
    legend = "; ".join(f"<b>{k.replace('_', ' ')}</b>: {esc(v)}" for k, v in REASON_TEXT.items())
    pos = review.items.attrs.get("positive_label", "positive")
    summary = ", ".join(f"{int(review.ranked['reasons'].str.contains(x).sum())} {x.replace('_', ' ')}" for x in REASONS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{_CSS}</style></head>
<body><h1>{esc(title)}</h1>
<p class="note">{esc(subtitle)}</p>
<p class="note">{len(review.ranked)} of {len(review.items)} images have at least one reason ({summary});
the {len(table)} most suspicious are listed, most suspicious first (more reasons first, then the lower the
out-of-fold probability of the label the image carries). <b>prob</b> is the out-of-fold probability of
<b>{esc(str(pos))}</b>, from a fold model that never saw the image. The yellow line is the glomerulus mask.
Write your decision in the <code>reviewed_label</code> column of review.csv (the row with the same image ID),
a comment if you like, then apply it with <code>glomlib data apply-review</code>.</p>
<p class="note">Reasons: {legend}.</p>
<table><thead><tr><th>#</th><th>image</th><th>label</th><th>prob</th><th>reasons</th><th>slide</th>
<th>similar image with the other label</th><th>your label</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def write_review(
    review: Review,
    out: str | Path,
    cfg: ReviewConfig | None = None,
    slide_names: Mapping[str, str] | None = None,
    subtitle: str = "",
) -> dict[str, Path]:
    """Write ``review.html``, ``review.csv`` and ``pairs.csv`` into ``out`` (new files only)."""
    cfg = cfg or ReviewConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = review_table(review, cfg.n_items, slide_names, cfg.show_paths)
    page = review_html(review, table, thumb_size=cfg.thumb_size, subtitle=subtitle, slide_names=slide_names)
    pairs = review.pairs.copy()
    if slide_names is not None and len(pairs):
        for s in ("a", "b"):
            pairs[f"slide_{s}"] = [slide_names.get(v, v) for v in pairs[f"slide_{s}"]]
    if not cfg.show_paths:
        pairs = pairs.drop(columns=[c for c in ("path_a", "path_b") if c in pairs])
    paths = {"html": out / "review.html", "csv": out / "review.csv", "pairs": out / "pairs.csv"}
    write_csv_new(table, paths["csv"])
    write_csv_new(pairs.drop(columns=["i", "j"]), paths["pairs"])
    publish_new(paths["html"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return paths


def run_review(
    cfg: ReviewConfig | None = None, slide_names: Mapping[str, str] | None = None, **params: Any
) -> tuple[Review, dict[str, Path]]:
    """The whole review from a fine-tune run: inputs, reasons, ranking, and the files in a new ``out`` folder."""
    cfg = cfg if cfg is not None else ReviewConfig.from_params(**params)
    run_dir = resolve_run(cfg.run)
    items = load_review_inputs(run_dir, cfg.data, cfg.label_fraction)
    out = Path(runs.new_run_dir("runs", "review") if cfg.out == "auto" else runs.ensure_new_dir(cfg.out))
    try:
        review = build_review(items, cfg)
    except BaseException:
        runs.release_claim(out)  # nothing written yet: the same --out can be used again
        raise
    cfg.save(out / "config.json")
    runs.write_provenance(
        out, cfg, extra={"finetune_run": str(Path(run_dir).resolve()), "manifest": items.attrs.get("manifest", "")}
    )
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    run_name = Path(run_dir).name if cfg.show_paths else "a fine-tune run"
    sub = f"Out-of-fold predictions of {run_name}; built {when}."
    paths = write_review(review, out, cfg, slide_names, sub)
    return review, paths
