"""glomlib.evaluate.plots: each figure function draws what it is given, and files land where promised."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from glomlib.evaluate import plots  # noqa: E402


def test_save_figure_writes_png_of_the_figure(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.imshow(np.zeros((4, 4, 3)))
    p = plots.save_figure(fig, tmp_path, "black", dpi=50)
    assert p == tmp_path / "figures" / "black.png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(p)
    assert img.shape[0] > 10 and img.shape[1] > 10
    plt.close(fig)


def test_bar_counts_one_stacked_bar_per_group_and_class():
    table = pd.DataFrame({"GS": [3, 5], "nonGS": [7, 1]}, index=["A", "B"])
    table.columns.name = "label"
    fig = plots.bar_counts(table, "Images per centre", rotate=45)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height()) for p in ax.patches)
    assert heights == [1, 3, 5, 7]
    assert ax.get_title() == "Images per centre" and [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GS", "nonGS"]
    plt.close(fig)


def test_montage_grid_captions_masks_and_empty():
    imgs = [np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200)]
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    fig = plots.montage(
        imgs,
        captions=["a", "b", "c"],
        ncols=2,
        title="T",
        masks=[mask, None, None],
        caption_colours=["red", "black", "black"],
    )
    axes = fig.axes
    assert len(axes) == 4  # 2 x 2 grid, the last tile empty
    assert [ax.get_title() for ax in axes[:3]] == ["a", "b", "c"] and axes[3].get_images() == []
    assert axes[0].title.get_color() == "red"
    assert len(axes[0].collections) >= 1 and len(axes[1].collections) == 0  # the mask outline on tile 0 only
    assert int(axes[1].get_images()[0].get_array()[0, 0, 0]) == 100
    assert fig._suptitle.get_text() == "T"
    plt.close(fig)
    empty = plots.montage([], title="Errors")
    assert "nothing to show" in empty.axes[0].texts[0].get_text()
    plt.close(empty)


def test_cam_overlay_blends_and_keeps_shape():
    img = np.full((4, 5, 3), 100, np.uint8)
    assert np.array_equal(plots.cam_overlay(img, np.zeros((4, 5)), alpha=0.0), img)
    hot = plots.cam_overlay(img, np.ones((4, 5)), alpha=1.0)
    assert hot.shape == (4, 5, 3) and hot.dtype == np.uint8
    assert hot[0, 0, 0] > 100 and hot[0, 0, 2] < 100  # jet(1) is red: more red, less blue than the grey image
    half = plots.cam_overlay(img, np.ones((4, 5)), alpha=0.5)
    assert np.all(np.abs(half.astype(int) - (img.astype(int) + hot.astype(int)) / 2) <= 1)


def test_show_saves_and_closes(tmp_path):
    fig, _ = plt.subplots()
    n = len(plt.get_fignums())
    plots.show(fig, tmp_path, "fig", "a caption")
    assert (tmp_path / "figures" / "fig.png").is_file()
    assert len(plt.get_fignums()) == n - 1
