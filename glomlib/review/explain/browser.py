"""The error browser: ipywidgets in a live kernel (the rendered report shows notebook 05's error gallery)."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from glomlib.evaluate import plots
from glomlib.review.explain.galleries import caption, load_display_images, load_display_masks
from glomlib.review.explain.inputs import OUTCOMES


def live_frontend(interactive: bool = True) -> bool:
    """True when widgets can work: ``interactive`` is on and the kernel was started by a Jupyter server
    (JupyterLab/Notebook set ``JPY_SESSION_NAME``) or VS Code. papermill/nbclient set neither, so rendered
    reports get the static gallery. ``GLOMLIB_INTERACTIVE=0/1`` overrides the detection."""
    if not interactive:
        return False
    env = os.environ.get("GLOMLIB_INTERACTIVE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    try:
        from IPython import get_ipython

        if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
            return False
    except ImportError:  # pragma: no cover
        return False
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"))


def filter_errors(
    pred: pd.DataFrame, kind: str = "errors", centre: str = "all", confidence: tuple[float, float] = (0.5, 1.0)
) -> pd.DataFrame:
    """Rows to browse: kind in {"errors", "FP", "FN", "all"} (or a class label), one centre or "all", and a
    confidence range; most confident first."""
    d = pred
    if kind == "errors":
        d = d[d["error"]]
    elif kind in OUTCOMES:
        d = d[d["outcome"] == kind]
    elif kind != "all":
        d = d[d["label"].astype(str) == kind]
    if centre != "all":
        d = d[d["center"].astype(str) == centre]
    d = d[(d["confidence"] >= confidence[0]) & (d["confidence"] <= confidence[1])]
    return d.sort_values("confidence", ascending=False)


def error_browser(pred: pd.DataFrame, page_size: int = 12, size: int = 160):
    """An ipywidgets browser: filter by outcome/class, centre and confidence; page through the images."""
    import ipywidgets as w

    labels = sorted(set(pred["label"].astype(str)) - {""})
    kind = w.Dropdown(options=["errors", "FP", "FN", "all", *labels], value="errors", description="show")
    centre = w.Dropdown(
        options=["all", *sorted(set(pred["center"].astype(str)) - {""})], value="all", description="centre"
    )
    conf = w.FloatRangeSlider(
        value=(0.5, 1.0), min=0.5, max=1.0, step=0.01, description="confidence", continuous_update=False
    )
    prev_b, next_b = w.Button(description="◀ previous"), w.Button(description="next ▶")
    info, out = w.Label(), w.Output()
    state = {"page": 0}

    def render(*_):
        d = filter_errors(pred, kind.value, centre.value, conf.value)
        pages = max(1, -(-len(d) // page_size))
        state["page"] = min(state["page"], pages - 1)
        chunk = d.iloc[state["page"] * page_size : (state["page"] + 1) * page_size]
        info.value = f"{len(d)} images · page {state['page'] + 1}/{pages}"
        with out:
            out.clear_output(wait=True)
            if len(chunk):
                imgs = load_display_images(chunk["path"].tolist(), size)
                masks = load_display_masks(chunk["mask"].tolist(), size) if "mask" in chunk else None
                fig = plots.montage(
                    list(imgs),
                    [caption(r) for _, r in chunk.iterrows()],
                    ncols=6,
                    masks=masks,
                    caption_colours=[plots.OUTCOME_COLOURS[o] for o in chunk["outcome"]],
                )
                display(fig)
                plt.close(fig)
            else:
                print("No images match these filters.")

    def reset(*_):
        state["page"] = 0
        render()

    def step(delta):
        def f(*_):
            state["page"] = max(0, state["page"] + delta)
            render()

        return f

    for c in (kind, centre, conf):
        c.observe(reset, names="value")
    prev_b.on_click(step(-1))
    next_b.on_click(step(+1))
    render()
    return w.VBox([w.HBox([kind, centre, conf]), w.HBox([prev_b, next_b, info]), out])


def show_error_browser(pred: pd.DataFrame, interactive: bool = True) -> str:
    """The widget browser in a live kernel ("widget"); elsewhere (papermill, rendered reports) nothing ("static":
    the page's error gallery stands in)."""
    if live_frontend(interactive):
        display(error_browser(pred))
        return "widget"
    return "static"
