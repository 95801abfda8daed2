"""Figures a reader can use: one colour-blind-safe palette, real alt texts, native-size tiles.

Okabe & Ito's palette gives each class one colour on every page; figures are embedded with a real alt text
(photographs as JPEG); patch tiles keep their native resolution and enlarge on click."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from glomlib.publish.present.tables import Html

# Okabe & Ito (2008), distinguishable with every common colour-vision deficiency.
PALETTE = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "grey": "#7F7F7F",
}
# The positive class (the lesion: GS, M1) is vermillion everywhere, the negative class blue.
CLASS_COLORS = {"positive": PALETTE["vermillion"], "negative": PALETTE["blue"]}
INIT_COLORS = {"glom": PALETTE["green"], "imagenet": PALETTE["orange"], "scratch": PALETTE["purple"]}
# False positives and false negatives: blue and orange tell apart for every reader (not orange vs pink).
ERROR_COLORS = {"FP": PALETTE["sky"], "FN": PALETTE["orange"], "TP": PALETTE["vermillion"], "TN": PALETTE["blue"]}


def class_colors(positive: str, negative: str) -> dict[str, str]:
    """``{positive label: vermillion, negative label: blue}`` for seaborn/matplotlib ``palette=``."""
    return {positive: CLASS_COLORS["positive"], negative: CLASS_COLORS["negative"]}


def _data_url(img: Any, photo: bool) -> tuple[str, int, int]:
    """A matplotlib figure or an RGB uint8 array as a data URL (JPEG q85 for photographs, PNG for diagrams)."""
    from PIL import Image

    if hasattr(img, "savefig"):
        buf = io.BytesIO()
        img.savefig(buf, format="png", dpi=img.dpi, bbox_inches="tight")
        pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    else:
        pil = Image.fromarray(np.asarray(img, dtype=np.uint8)).convert("RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG" if photo else "PNG", quality=85, optimize=True)
    mime = "image/jpeg" if photo else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}", pil.width, pil.height


def figure(fig: Any, alt: str, caption: str = "", photo: bool = False, close: bool = True) -> Html:
    """``fig`` (matplotlib figure or RGB array) embedded with ``alt`` text and a caption; ``photo=True`` for
    montages of patches (JPEG). Closes a matplotlib figure so it is not shown a second time."""
    if not alt.strip():
        raise ValueError("figure: every figure needs an alt text that says what it shows")
    url, w, _ = _data_url(fig, photo)
    if close and hasattr(fig, "savefig"):
        import matplotlib.pyplot as plt

        plt.close(fig)
    cap = f"<figcaption style='color:#444;font-size:.9em'>{html.escape(caption)}</figcaption>" if caption else ""
    return Html(
        f"<figure style='margin:.5em 0 1.2em'><img src='{url}' alt='{html.escape(alt, quote=True)}' "
        f"style='max-width:100%;width:{w}px;height:auto'>{cap}</figure>"
    )


_TILE_CSS = (
    "<style>.glom-tiles{display:flex;flex-wrap:wrap;gap:10px}.glom-tiles figure{margin:0;width:min-content}"
    ".glom-tiles img{display:block;max-width:none;cursor:zoom-in;transition:transform .15s;transform-origin:top left}"
    ".glom-tiles img:focus{transform:scale(2);position:relative;z-index:5;cursor:zoom-out;"
    "box-shadow:0 0 12px #0008;outline:none}"
    ".glom-tiles figcaption{font-size:.8em;line-height:1.25;color:#333;margin-top:2px}</style>"
)


def tiles(images: Sequence[Any], captions: Sequence[str], alts: Sequence[str], border: Sequence[str] = ()) -> Html:
    """A gallery of RGB uint8 patches at native resolution (JPEG), each with its caption (true label, probability,
    pseudonymised slide) and alt text; click a tile to see it at twice its size. ``border`` gives an optional
    colour per tile (e.g. :data:`ERROR_COLORS`)."""
    if not (len(images) == len(captions) == len(alts)):
        raise ValueError("tiles: one caption and one alt text per image")
    out = []
    for i, (img, cap, alt) in enumerate(zip(images, captions, alts, strict=True)):
        url, w, h = _data_url(img, photo=True)
        edge = f"border:4px solid {border[i]};" if i < len(border) and border[i] else ""
        out.append(
            f"<figure><img tabindex='0' src='{url}' width='{w}' height='{h}' style='{edge}' "
            f"alt='{html.escape(alt, quote=True)}'><figcaption>{html.escape(cap)}</figcaption></figure>"
        )
    return Html(_TILE_CSS + "<div class='glom-tiles'>" + "".join(out) + "</div>")
