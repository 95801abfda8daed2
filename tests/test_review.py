"""Tests for the label review (glomlib.review.labels) and applying it (glomlib.data.relabel, glomlib data
apply-review): planted label errors are ranked first with their reasons, a shifted + rotated crop of a real
glomerulus with the other label is caught as a conflicting duplicate, the page is self-contained and loads in
headless Chromium, and the round trip review sheet -> filled CSV -> apply-review changes exactly the planted rows."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import _write_png, build_tiny_dataset  # noqa: E402
from test_browser import check_page, chromium  # noqa: E402,F401  (chromium: the shared browser fixture)

from glomlib.cli import main  # noqa: E402
from glomlib.data.manifest import read_manifest  # noqa: E402
from glomlib.data.relabel import RECORD_COLUMNS as RECORD  # noqa: E402
from glomlib.data.relabel import ReviewError, apply_review  # noqa: E402
from glomlib.review import labels as R  # noqa: E402

PLANTED = (3, 10, 5, 16)  # manifest rows (0-based) whose out-of-fold call confidently contradicts their label


def make_run(tmp_path: Path, manifest: Path, positive: str = "M1", planted=PLANTED) -> Path:
    """A fine-tune run folder as notebook 03 writes it (config.json + out-of-fold predictions.csv)."""
    df = read_manifest(manifest, positive_label=positive)
    rng = np.random.default_rng(0)
    prob = np.where(df["y"] == 1, rng.uniform(0.7, 0.95, len(df)), rng.uniform(0.05, 0.3, len(df)))
    for i in planted:
        prob[i] = 0.02 if df.at[i, "y"] == 1 else 0.97
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(
        {
            "path": df["path"],
            "slide": df["slide"],
            "center": df["center"],
            "label": df["label"],
            "y": df["y"],
            "prob": prob,
            "pred": (prob >= 0.5).astype(int),
            "fold": np.arange(len(df)) % 3,
            "seed": 0,
            "init": "imagenet",
            "label_fraction": 1.0,
        }
    ).to_csv(run / "predictions.csv", index=False)
    (run / "config.json").write_text(json.dumps({"data": str(manifest), "positive_label": positive}))
    return run


def test_planted_errors_ranked_first_with_reasons(tmp_path):
    manifest = build_tiny_dataset(tmp_path / "data", size=16)
    run = make_run(tmp_path, manifest)
    items = R.load_review_inputs(run)
    rv = R.build_review(items, R.ReviewConfig(n_pairs=0))
    top = rv.ranked.head(len(PLANTED))
    assert set(top["path"]) == {items.at[i, "path"] for i in PLANTED}
    for _, r in top.iterrows():
        assert "confident_error" in r["reasons"] and "confident_learning" in r["reasons"]
        assert r["p_given_label"] < 0.05
    assert (rv.ranked["rank"] == np.arange(1, len(rv.ranked) + 1)).all()
    # the image_id is the sha256 prefix of the file
    i = 3
    assert items.at[i, "image_id"] == hashlib.sha256(Path(items.at[i, "path"]).read_bytes()).hexdigest()[:16]


def test_confident_learning_matches_cleanlab_directly():
    from cleanlab.filter import find_label_issues

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.15, 200), 0.01, 0.99)
    p[:6] = np.where(y[:6] == 1, 0.03, 0.97)  # six confidently contradicted labels
    ours = R.confident_learning_issues(y, p)
    ref = find_label_issues(labels=y, pred_probs=np.stack([1 - p, p], 1), filter_by="prune_by_noise_rate")
    assert (ours == ref).all() and ours[:6].all()


def test_conflicting_pairs_and_rotation_invariant_embedding():
    sim = np.full((4, 4), 0.0)
    sim[0, 1] = sim[1, 0] = 0.99  # same label: not a conflict
    sim[2, 3] = sim[3, 2] = 0.95  # conflicting
    sim[0, 3] = sim[3, 0] = 0.5
    np.fill_diagonal(sim, -np.inf)
    pairs = R.conflicting_pairs(sim, np.array([1, 1, 0, 1]), n_pairs=5, min_percentile=0)
    assert list(zip(pairs["i"], pairs["j"])) == [(2, 3), (0, 3)][: len(pairs)]
    assert pairs.iloc[0]["pair_rank"] == 1
    # dihedral variants: the 8 variants of a rotated image are a permutation of the original's
    img = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
    a = {v.tobytes() for v in R.dihedral_variants(img)}
    b = {v.tobytes() for v in R.dihedral_variants(np.rot90(img, 1, axes=(1, 2))[:, :, ::-1])}
    assert a == b and len(a) == 8


def _fill(table: pd.DataFrame, decisions: dict[str, tuple[str, str]]) -> pd.DataFrame:
    t = table.copy()
    for iid, (lab, comment) in decisions.items():
        t.loc[t["image_id"] == iid, ["reviewed_label", "comment"]] = [lab, comment]
    return t


@pytest.mark.parametrize("show_paths", [True, False])
def test_round_trip_review_apply(tmp_path, capsys, show_paths):
    manifest = build_tiny_dataset(tmp_path / "data", size=16)
    before = manifest.read_bytes()
    run = make_run(tmp_path, manifest)
    rv, paths = R.run_review(
        R.ReviewConfig(run=str(run), out=str(tmp_path / "review"), n_pairs=0, show_paths=show_paths),
        slide_names={"S00": "slide-x"},
    )
    sheet = pd.read_csv(paths["csv"], dtype=str, keep_default_na=False)
    assert list(sheet.columns) == R.REVIEW_COLUMNS
    assert (sheet["reviewed_label"] == "").all() and (sheet["comment"] == "").all()
    assert (sheet["path"] != "").all() == show_paths
    assert "S00" not in set(sheet["slide"])
    page = paths["html"].read_text()
    assert "<script" not in page and 'src="http' not in page and page.count("data:image/png;base64,") >= len(sheet)
    if not show_paths:
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
        assert ".png" not in text and "S00" not in text and "slide-x" in text
    items = rv.items.set_index("path")
    other = {"M1": "M0", "M0": "M1"}
    want = {
        items.at[rv.items.at[3, "path"], "image_id"]: (other[rv.items.at[3, "label"]], "no sclerosis seen"),
        items.at[rv.items.at[10, "path"], "image_id"]: (other[rv.items.at[10, "label"]], ""),
        items.at[rv.items.at[5, "path"], "image_id"]: (rv.items.at[5, "label"], "label is right"),  # confirm
        items.at[rv.items.at[16, "path"], "image_id"]: ("unsure", "poor focus"),
    }
    assert set(want) <= set(sheet["image_id"])
    filled = _fill(sheet, want)
    filled_csv = tmp_path / "filled.csv"
    filled.to_csv(filled_csv, index=False)
    out = tmp_path / "reviewed" / "manifest.csv"
    rc = main(
        [
            "data",
            "apply-review",
            str(filled_csv),
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--reviewer",
            "Dr P",
            "--date",
            "2026-11-26",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "2 label(s) changed" in err, err
    assert manifest.read_bytes() == before  # the old manifest is untouched
    old = read_manifest(manifest, positive_label="M1")
    new = read_manifest(out, positive_label="M1")
    assert list(new["path"]) == list(old["path"]) and list(new["mask"]) == list(old["mask"])
    changed = new.index[new["label"] != old["label"]].tolist()
    assert changed == [3, 10]
    assert new.at[3, "label"] == other[old.at[3, "label"]] and new.at[10, "label"] == other[old.at[10, "label"]]
    assert new.at[3, "review_decision"] == "changed" and new.at[3, "review_label_before"] == old.at[3, "label"]
    assert new.at[3, "review_comment"] == "no sclerosis seen" and new.at[3, "review_reviewer"] == "Dr P"
    assert (new.loc[new["review_decision"] != "", "review_date"] == "2026-11-26").all()
    assert set(new["review_decision"]) - {""} <= {"changed", "confirmed", "unsure"}
    assert list(new.index[new["review_decision"] == "unsure"]) == [16]
    assert list(new.index[new["review_decision"] == "confirmed"]) == [5]
    assert (new.loc[~new.index.isin([3, 5, 10, 16]), RECORD] == "").all().all()
    from glomlib.review.audit import label_changes, show_labels

    ch = label_changes(new)  # the audit (notebook 01) shows which labels changed
    assert list(ch.loc[ch["decision"] == "changed", "row"]) == [4, 11]
    assert (ch.loc[ch["decision"] == "changed", "label_before"] != ch.loc[ch["decision"] == "changed", "label"]).all()
    shown = show_labels(new, tmp_path)
    assert len(shown["changes"]) == 4 and (tmp_path / "label_changes.csv").is_file()
    assert len(label_changes(old)) == 0
    side = json.loads(Path(str(out) + ".review.json").read_text())
    assert side["changed"] == 2 and side["manifest_sha256"] == hashlib.sha256(before).hexdigest()
    assert {c["manifest_row"] for c in side["changes"] if c["decision"] == "changed"} == {4, 11}
    # never overwrites
    rc = main(
        ["data", "apply-review", str(filled_csv), "--manifest", str(manifest), "--out", str(out), "--reviewer", "Dr P"]
    )
    assert rc == 3 and "already exists" in capsys.readouterr().err  # exit 3: output exists (documented)


def test_apply_review_reports_every_problem_and_writes_nothing(tmp_path):
    manifest = build_tiny_dataset(tmp_path / "data", size=16)
    df = read_manifest(manifest, positive_label="M1")
    bad = pd.DataFrame(
        {
            "image_id": [df.at[0, "sha256"][:16], "0" * 16, df.at[1, "sha256"][:16], df.at[0, "sha256"][:16]],
            "reviewed_label": ["M1", "M0", "GS", "M0"],
            "comment": "",
        }
    )
    csv = tmp_path / "bad.csv"
    bad.to_csv(csv, index=False)
    out = tmp_path / "new.csv"
    with pytest.raises(ReviewError) as e:
        apply_review(csv, manifest, out, reviewer="")
    msg = str(e.value)
    assert "review row 1: no reviewer" in msg
    with pytest.raises(ReviewError) as e:
        apply_review(csv, manifest, out, reviewer="Dr P")
    msg = str(e.value)
    assert "review row 2: image_id 0000000000000000 matches 0" in msg
    assert "review row 3: reviewed_label 'GS' is not a label" in msg
    assert "review row 4: the same image was reviewed as 'M1' in review row 1" in msg
    assert not out.exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_shifted_rotated_crop_of_real_glomerulus_is_caught(shared_data, tmp_path):
    """60 real patches plus a shifted (12 % crop, resized back) and rotated copy of one of them labelled with the
    other class: that pair is the most similar conflicting pair of the collection."""
    from PIL import Image

    raw = shared_data / "Patches" / "Raw" / "Images"
    files = sorted((raw / "GS").glob("*.png"))[:20] + sorted((raw / "nonGS").glob("*.png"))[:40]
    rows = [{"path": str(f), "label": f.parent.name, "slide": f.stem.rsplit("-", 1)[0]} for f in files]
    src = files[25]  # a nonGS glomerulus
    im = np.asarray(Image.open(src).convert("RGB"))
    h, w = im.shape[:2]
    crop = np.asarray(Image.fromarray(im[int(0.12 * h) :, int(0.08 * w) :]).resize((w, h)))
    _write_png(tmp_path / "copy.png", np.rot90(crop, 1))
    rows.append({"path": str(tmp_path / "copy.png"), "label": "GS", "slide": "COPY_1"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    df = read_manifest(manifest, positive_label="GS")
    items = df[["path", "label", "y", "slide", "center", "mask", "sha256"]].assign(
        prob=np.where(df["y"] == 1, 0.8, 0.2), image_id=[h[:16] for h in df["sha256"]]
    )
    rv = R.build_review(items, R.ReviewConfig(n_pairs=5, feature_size=96))
    first = rv.pairs.iloc[0]
    assert {first["path_a"], first["path_b"]} == {str(src), str(tmp_path / "copy.png")}
    dup = rv.ranked[rv.ranked["reasons"].str.contains("duplicate_conflict")]
    assert str(tmp_path / "copy.png") in set(dup["path"]) and str(src) in set(dup["path"])


def test_review_page_loads_in_headless_chromium(chromium, tmp_path):
    exe = chromium
    manifest = build_tiny_dataset(tmp_path / "data", size=16)
    run = make_run(tmp_path, manifest)
    emb = np.random.default_rng(0).normal(size=(24, 8))
    items = R.load_review_inputs(run)
    emb[5] = emb[2] + 0.01  # 2 and 5 have different labels (alternating): a conflicting pair with a partner image
    rv = R.build_review(items, R.ReviewConfig(n_pairs=1, min_pair_percentile=0, whiten=0), embeddings=emb)
    assert "duplicate_conflict" in ";".join(rv.ranked["reasons"])
    paths = R.write_review(rv, tmp_path / "review")
    res = check_page(exe, paths["html"], tmp_path / "browser")
    n_rows = len(pd.read_csv(paths["csv"]))
    assert res["broken"] == [] and res["images"] >= n_rows + 1  # every thumbnail plus the partner images
    assert not res["traceback"] and res["text_chars"] > 200
    shutil.rmtree(tmp_path / "browser", ignore_errors=True)


def test_apply_review_into_a_rater_column(tmp_path):
    """With --rater the decision goes into label_<rater>; the label column and the other raters stay as they were."""
    manifest = build_tiny_dataset(
        tmp_path / "data",
        size=16,
        extra_columns={
            "label_r1": lambda s, k: ("M1", "M0")[(s + k) % 2],
            "label_r2": lambda s, k: ("M1", "M0")[(s + k) % 2],
        },
    )
    df = read_manifest(manifest, positive_label="M1")
    review = pd.DataFrame(
        {"image_id": [df.at[2, "sha256"][:16]], "reviewed_label": ["M0" if df.at[2, "label"] == "M1" else "M1"]}
    )
    review.to_csv(tmp_path / "r.csv", index=False)
    out = tmp_path / "new" / "m.csv"
    s = apply_review(tmp_path / "r.csv", manifest, out, reviewer="Dr Q", rater="r2")
    assert s["column"] == "label_r2" and s["changed"] == 1
    new = read_manifest(out, positive_label="M1")
    assert (new["label"] == df["label"]).all() and (new["label_r1"] == df["label_r1"]).all()
    assert list(new.index[new["label_r2"] != df["label_r2"]]) == [2]
    with pytest.raises(ReviewError, match="rater"):
        apply_review(tmp_path / "r.csv", manifest, tmp_path / "x.csv", reviewer="Dr Q", rater="r9")
