"""The reader-facing formatting layer (glomlib.publish.present): what a pathologist reads on every page."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from glomlib.publish import present as P


def test_numbers_read_as_a_reader_expects():
    assert P.count(3.0) == "3" and P.count(1234) == "1,234" and P.count(float("nan")) == "—"
    assert P.share(0.0151) == "1.5 %" and P.share(None, missing="not measured") == "not measured"
    assert P.pvalue(0.0) == "< 0.0001" and P.pvalue(0.00003) == "< 0.0001"
    assert P.pvalue(0.034) == "0.034" and P.pvalue(0.51234) == "0.51"
    assert P.num(100.188477, digits=1) == "100.2"
    assert P.ci(0.912, 0.871, 0.95) == "0.912 (95 % CI 0.871 to 0.950)"
    assert P.ci(0.01, -0.02, 0.04, signed=True) == "+0.010 (95 % CI -0.020 to +0.040)"
    assert P.ci(0.5, math.nan, 0.6) == "0.500"  # no interval -> no half-interval


def test_claim_order_only_where_the_printed_interval_excludes_zero():
    assert "higher AUC" in P.claim_order("glom", "scratch", 0.056, 0.025, 0.085)
    assert "lower AUC" in P.claim_order("scratch", "glom", -0.056, -0.085, -0.025)
    # a lower bound of 0.0000985 prints as +0.000: the sentence must not claim an order the reader cannot see
    s = P.claim_order("glom", "imagenet", 0.010, 0.0000985, 0.026)
    assert "cannot be told apart" in s and "+0.000" in s


def test_table_has_words_no_index_and_no_nan():
    df = pd.DataFrame({"init": ["glom", "scratch"], "n": [3.0, 2.0], "auc": [0.91, np.nan], "junk": [1, 2]})
    html = str(P.table(df, {"init": "Starting point", "n": "Folds", "auc": "AUC"}, formats={"n": P.count}))
    assert "<th>Starting point</th><th>Folds</th><th>AUC</th>" in html
    assert "junk" not in html and "NaN" not in html and "nan" not in html and "3.0" not in html
    assert ">3<" in html and ">—<" in html and "0.910" in html
    with pytest.raises(KeyError, match="no column"):
        P.table(df, {"auroc": "AUC"})


def test_summary_and_warning_escape_html_and_keep_bold():
    box = str(P.summary(["GS is **positive**", "<script>x</script>"], "conclusion", caveat="quick profile"))
    assert "What this page shows" in box and "What to conclude" in box and "<b>positive</b>" in box
    assert "<script>" not in box and "Caveat." in box
    assert "glom-warning" in str(P.warning("one class only"))


def test_figures_carry_alt_text_and_photos_are_jpeg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    html = str(P.figure(fig, alt="ROC curve of glom", caption="ROC"))
    assert "alt='ROC curve of glom'" in html and "data:image/png" in html and "<figcaption" in html
    with pytest.raises(ValueError, match="alt text"):
        P.figure(np.zeros((8, 8, 3), np.uint8), alt=" ")
    rng = np.random.default_rng(0)
    tiles = str(P.tiles([rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)], ["GS, p 0.91"], ["a GS patch"]))
    assert "data:image/jpeg" in tiles and "width='224'" in tiles and "alt='a GS patch'" in tiles
    with pytest.raises(ValueError, match="one caption"):
        P.tiles([np.zeros((4, 4, 3), np.uint8)], [], [])


def test_class_colours_are_one_colour_blind_safe_pair():
    c = P.class_colors("GS", "nonGS")
    assert c == {"GS": P.PALETTE["vermillion"], "nonGS": P.PALETTE["blue"]}
    assert P.ERROR_COLORS["FP"] != P.ERROR_COLORS["FN"]


def test_budget_claim_names_the_budgets_whose_interval_excludes_zero():
    rows = [
        ("1 per class", -0.015, -0.087, 0.048),
        ("2 per class", 0.037, 0.017, 0.058),
        ("4 per class", 0.013, 0.0029, 0.024),
    ]
    s = P.budget_claim("fine-tuned", 5, "glom", "imagenet", rows)
    assert s.startswith("Fewer labels (fine-tuned, 5 seeds): **glom** has a higher AUC than **imagenet**")
    assert "at 2 and 4 labels per class; at the other 1 of 3 budgets the 95 % CI includes 0." in s
    lower = P.budget_claim("frozen linear probe", 1, "glom", "scratch", [("5 % of the labels", -0.05, -0.09, -0.01)])
    assert "(frozen linear probe, 1 seed)" in lower and "at no budget; a lower one at 5 % of the labels." in lower
    none = P.budget_claim("fine-tuned", 5, "glom", "imagenet", [("1 per class", 0.01, 0.0000985, 0.03)])
    assert (
        "cannot be told apart at 1 per class, the one label budget (the 95 % CI includes 0)" in none
    )  # +0.000 as printed: no order
    assert P.budget_claim("fine-tuned", 5, "glom", "imagenet", []) == ""
    assert P.budget_list(
        ["2 per class", "4 per class", "16 per class", "10 % of the labels", "25 % of the labels"]
    ) == ("2, 4 and 16 labels per class and at 10 % and 25 % of the labels")
    assert P.budget_list(["100 % of the labels"]) == "100 % of the labels"
