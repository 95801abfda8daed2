"""The report's index leads with the answer (AUC per init and paired differences with 95 % CIs, a sentence per pair
that claims an order only where the CI excludes 0), says what the identifiers are, and keeps developer output out;
large photographs embedded as PNG become JPEG."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.publish.report import headline, pages
from glomlib.publish.report.index import render_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report import visible_text  # noqa: E402

INITS = ["glom", "imagenet", "scratch"]


def fake_finetune_runs(run_dir: Path, n_slides: int = 12, per_slide: int = 10, seed: int = 0) -> None:
    """finetune/<init>/ as notebook 03 leaves it (metrics, config, folds, out-of-fold predictions): glom and
    imagenet separate the classes equally well, scratch guesses."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_slides):
        for i in range(per_slide):
            y = int((i + s) % 4 == 0)
            rows.append({"path": f"img/S{s:02d}-{i}.png", "slide": f"S{s:02d}", "center": f"C{s % 3}", "y": y})
    base = pd.DataFrame(rows)
    base["label"] = np.where(base["y"] == 1, "GS", "nonGS")
    base["fold"] = base["slide"].str[1:].astype(int) % 3
    signal = base["y"] * 2.0 + rng.normal(0, 1.0, len(base))
    probs = {"glom": signal, "imagenet": signal + rng.normal(0, 0.2, len(base)), "scratch": rng.random(len(base))}
    folds = base.groupby("slide").agg(fold=("fold", "first"), n=("path", "size")).reset_index().assign(seed=0)
    for init in INITS:
        d = run_dir / "finetune" / init
        d.mkdir(parents=True)
        pred = base.assign(prob=1 / (1 + np.exp(-np.asarray(probs[init]))), seed=0, init=init, label_fraction=1.0)
        pred.to_csv(d / "predictions.csv", index=False)
        folds.to_csv(d / "folds.csv", index=False)
        (d / "config.json").write_text(json.dumps({"init": init, "data": "m.csv"}))
        summary = {"auc": {"mean": 0.9, "std": 0.02}}
        m = {"init": init, "positive_label": "GS", "negative_label": "nonGS", "summary": summary, "per_fold": []}
        (d / "metrics.json").write_text(json.dumps(m))


def test_index_leads_with_aucs_and_paired_differences_with_cis(tmp_path):
    run = tmp_path / "run"
    fake_finetune_runs(run)
    definition = {"inits": INITS, "parameters": {"04_baseline_comparison": {"n_boot": 200}}, "profile": {}}
    answer = headline.comparison(run, definition)
    assert answer is not None
    auc = {r["init"].split()[0]: r for r in answer["auc"]}
    assert auc["glom"]["lo"] < auc["glom"]["auc"] < auc["glom"]["hi"] and auc["scratch"]["auc"] < 0.75
    assert answer["task"] == {
        "positive": "GS",
        "negative": "nonGS",
        "n": 120,
        "n_pos": 30,
        "slides": 12,
        "centres": 3,
        "fraction": 1.0,
        "n_boot": 200,
        "ssl_from": "",  # no ssl/config.json: nothing said about the encoder's start
    }
    pages_ = [{"file": "04_baseline_comparison.html", "title": "Comparison", "stem": "04_baseline_comparison"}]
    index = render_index(
        tmp_path,
        run_name="r",
        pages=pages_,
        definition=definition,
        provenance={"versions": {"numpy": "2"}},
        summary={},
        license_info={"license": "CC BY-NC-SA 4.0", "citation": "Bueno 2020"},
        pseudonymised=False,
        scrub=lambda s: s,
        answer=answer,
        setting=("quick-cpu: 64 px thumbnails, 5 epochs, 3 folds, 1 seed", True),
    ).read_text()
    text = " ".join(visible_text(index).split())
    head = text[: text.find("Pages")]  # everything above the page list: the first screen
    assert "GS vs nonGS" in head and "AUC (95 % CI)" in head and "Difference in AUC (95 % CI)" in head
    assert re.search(r"glom 0\.\d{3} \(95 % CI 0\.\d{3} to [01]\.\d{3}\)", head)
    assert "glom and imagenet cannot be told apart on this data" in head  # CI includes 0: no order claimed
    assert "glom has a higher AUC than scratch" in head and "imagenet has a higher AUC than scratch" in head
    assert "quick-cpu: 64 px thumbnails, 5 epochs, 3 folds, 1 seed: a demonstration of the workflow" in head
    assert "120 glomeruli (30 GS, 25 %) from 12 slides of 3 centres" in head
    assert "real identifiers (not pseudonymised)" in head
    assert 'href="04_baseline_comparison.html"' in index
    for leftover in ("NaN", "nan", "{'", "runs/", "3.0 ", "0.0000"):
        assert leftover not in text, leftover


def test_no_comparison_without_predictions(tmp_path):
    assert headline.comparison(tmp_path, {"inits": INITS, "parameters": {}}) is None


def test_large_photographs_become_jpeg_diagrams_stay_png():
    from PIL import Image

    def uri(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    photo = np.random.default_rng(0).integers(0, 255, (500, 500, 3), dtype=np.uint8)
    diagram = np.full((900, 900, 3), 255, np.uint8)
    diagram[::7] = np.random.default_rng(1).integers(0, 255, (129, 900, 3), dtype=np.uint8)  # lines on white
    body = f'<img src="{uri(photo)}"><img src="{uri(diagram)}">'
    out = pages._PNG_URI.sub(pages._jpeg_if_photo, body)
    assert out.count("data:image/jpeg;base64,") == 1 and out.count("data:image/png;base64,") == 1
    assert len(out) < len(body)


def test_no_order_claimed_when_the_printed_interval_touches_zero(tmp_path):
    """A CI of +0.0000985 to +0.026 prints as "+0.000 to +0.026": the index claims no order (the demo's glom vs
    imagenet), while +0.025 to +0.085 does."""
    task = {"positive": "GS", "negative": "nonGS", "n": 794, "n_pos": 160, "slides": 25, "centres": 3}
    task.update(fraction=1.0, n_boot=1000, ssl_from="")
    pairs = [
        {
            "a": "glom",
            "b": "imagenet",
            "diff": 0.0104988,
            "boot_ci_low": 9.85e-05,
            "boot_ci_high": 0.0257,
            "delong_p": 0.05,
        },
        {"a": "glom", "b": "scratch", "diff": 0.0555, "boot_ci_low": 0.0252, "boot_ci_high": 0.0848, "delong_p": 1e-8},
    ]
    answer = {"auc": [{"init": "glom", "auc": 0.99, "lo": 0.98, "hi": 1.0}], "pairs": pairs, "task": task}
    page = render_index(
        tmp_path,
        run_name="r",
        pages=[],
        definition={"profile": {"name": "quick-cpu"}},
        provenance={},
        summary={},
        license_info={"license": "x", "citation": "y"},
        pseudonymised=True,
        scrub=lambda s: s,
        answer=answer,
    ).read_text()
    text = " ".join(html.unescape(visible_text(page)).split())
    assert "glom and imagenet cannot be told apart on this data (difference +0.010 (95 % CI +0.000 to +0.026)" in text
    assert "glom has a higher AUC than scratch" in text and "< 0.0001" in text
    assert "identifiers are stable pseudonyms" in text and "Caveat" not in text  # no demo caveat without settings
    assert "None" not in text and "Data fingerprint not recorded" in text


def test_index_repeats_page_04s_label_budget_sentences(tmp_path):
    """04 saves its paired differences per label budget (label_budget.csv); the index says the same sentences, budgets
    in label order, those without an AUC left out, so a budget run's first screen names where glom leads."""
    from glomlib.evaluate.compare import save_results
    from glomlib.publish import present as P

    run = tmp_path / "run"
    fake_finetune_runs(run)
    rows = [  # saved in another order than the labels: the index sorts
        ("fine-tuned", "4 per class", 8.0, "imagenet", 0.013, 0.0029, 0.024),
        ("fine-tuned", "1 per class", 2.0, "imagenet", -0.015, -0.087, 0.048),
        ("fine-tuned", "2 per class", 4.0, "imagenet", 0.037, 0.017, 0.058),
        ("fine-tuned", "8 per class", 16.0, "imagenet", float("nan"), float("nan"), float("nan")),
        ("fine-tuned", "1 per class", 2.0, "scratch", 0.1, 0.05, 0.15),
    ]
    cols = ["kind", "budget", "labels", "b", "diff", "ci_low", "ci_high"]
    budgets = pd.DataFrame(rows, columns=cols).assign(n_seeds=5, a="glom")
    out = run / "comparison"
    out.mkdir()
    pairwise = pd.DataFrame(
        [{"a": "glom", "b": i, "diff": 0.0, "boot_ci_low": -0.01, "boot_ci_high": 0.01} for i in INITS[1:]]
    )
    save_results(out, pd.DataFrame({"auc": [0.9]}), pairwise, budgets=budgets)
    definition = {"inits": INITS, "parameters": {"04_baseline_comparison": {"n_boot": 200}}, "profile": {}}
    answer = headline.comparison(run, definition)
    expected = P.budget_claim(
        "fine-tuned",
        5,
        "glom",
        "imagenet",
        [rows[1][1:2] + rows[1][4:], rows[2][1:2] + rows[2][4:], rows[0][1:2] + rows[0][4:]],
    )
    assert answer["budget_claims"][0] == expected
    assert "at 2 and 4 labels per class; at the other 1 of 3 budgets" in expected  # 8 per class: no AUC, left out
    index = render_index(
        tmp_path,
        run_name="r",
        pages=[],
        definition=definition,
        provenance={},
        summary={},
        license_info={"license": "x", "citation": "y"},
        pseudonymised=True,
        scrub=lambda s: s,
        answer=answer,
    ).read_text()
    text = " ".join(html.unescape(visible_text(index)).split())
    assert "Fewer labels (fine-tuned, 5 seeds): glom has a higher AUC than imagenet at 2 and 4 labels per class" in text
    assert "Fewer labels (fine-tuned, 5 seeds): glom has a higher AUC than scratch at 1 label per class." in text
    assert "With 100 % of the training labels, glom and imagenet cannot be told apart" in text
