"""Manifest validation: one test per bad-input class, on tiny generated images."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.data.manifest import (
    ManifestError,
    ManifestWarning,
    data_fingerprint,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def _csv(m: Path) -> pd.DataFrame:
    return pd.read_csv(m, dtype=str, keep_default_na=False)


def _save(df: pd.DataFrame, m: Path) -> Path:
    df.to_csv(m, index=False)
    return m


def _errors(m, **kw):
    _, problems = validate_manifest(m, **kw)
    return [p for p in problems if p.severity == "error"]


def _raises(m, **kw) -> ManifestError:
    with pytest.raises(ManifestError) as e:
        read_manifest(m, **kw)
    return e.value


def test_good_manifest_columns_and_attrs(tiny_manifest):
    df = read_manifest(tiny_manifest)
    assert list(df.columns[:10]) == [
        "path",
        "label",
        "y",
        "slide",
        "patient",
        "center",
        "split",
        "mask",
        "row",
        "sha256",
    ]
    assert len(df) == 24 and set(df["y"]) == {0, 1}
    assert (df["y"] == (df["label"] == "M1")).all()
    assert all(Path(p).is_absolute() and Path(p).exists() for p in df["path"])
    assert all(Path(p).exists() for p in df["mask"])
    assert (df["patient"] == df["slide"]).all()
    assert list(df["row"]) == list(range(1, 25))
    assert df.attrs["manifest"] == str(tiny_manifest.resolve())
    assert df.attrs["positive_label"] == "M1" and df.attrs["negative_label"] == "M0"


def test_missing_file(tiny_manifest):
    df = _csv(tiny_manifest)
    (tiny_manifest.parent / df.path[3]).unlink()
    e = _raises(tiny_manifest)
    assert "row 4" in str(e) and df.path[3] in str(e) and "does not exist" in str(e)


def test_zero_byte_file(tiny_manifest):
    df = _csv(tiny_manifest)
    (tiny_manifest.parent / df.path[5]).write_bytes(b"")
    e = _raises(tiny_manifest)
    assert "row 6" in str(e) and "0 bytes" in str(e) and df.path[5] in str(e)


def test_truncated_file(tiny_manifest):
    df = _csv(tiny_manifest)
    p = tiny_manifest.parent / df.path[7]
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    e = _raises(tiny_manifest)
    assert "row 8" in str(e) and "truncated" in str(e) and df.path[7] in str(e)
    assert [p.kind for p in e.problems] == ["truncated"]


def test_unreadable_file(tiny_manifest):
    df = _csv(tiny_manifest)
    (tiny_manifest.parent / df.path[2]).write_text("this is not an image")
    for full in (False, True):
        errs = _errors(tiny_manifest, full=full)
        assert [(p.row, p.kind) for p in errs] == [(3, "unreadable")], full
        assert df.path[2] in errs[0].format()


@pytest.mark.parametrize("kind", ["grey", "rgba", "16bit"])
def test_unusual_mode_converted_with_warning(tiny_manifest, write_png, kind, tmp_path):
    from glomlib.data.cache import load_images

    df = _csv(tiny_manifest)
    p = tiny_manifest.parent / df.path[0]
    rgb = np.full((16, 16, 3), 200, np.uint8)
    if kind == "grey":
        write_png(p, np.full((16, 16), 200, np.uint8))
    elif kind == "rgba":
        write_png(p, np.dstack([rgb, np.full((16, 16), 128, np.uint8)]))
    else:
        write_png(p, np.full((16, 16, 3), 200 * 257, np.uint16))
    with pytest.warns(ManifestWarning, match="row 1"):
        out = read_manifest(tiny_manifest)
    assert len(out) == 24 and out.attrs["warnings"]
    msg = out.attrs["warnings"][0]
    assert {"grey": "grey", "rgba": "alpha channel dropped", "16bit": "16-bit"}[kind] in msg
    img = load_images(out["path"][:1], 16, cache_dir=tmp_path)
    assert img.shape == (1, 16, 16, 3) and (np.asarray(img[0]) == 200).all()


def test_label_not_in_label_set(tiny_manifest):
    df = _csv(tiny_manifest)
    df.loc[4, "label"] = "M2"
    e = _raises(_save(df, tiny_manifest))
    assert "row 5" in str(e) and "'M2'" in str(e) and "label set" in str(e)


def test_positive_label_configurable_and_absent_positive(tiny_manifest):
    df = _csv(tiny_manifest)
    df["label"] = df["label"].map({"M1": "GS", "M0": "nonGS"})
    _save(df, tiny_manifest)
    e = _raises(tiny_manifest)  # default positive M1 occurs nowhere -> one clear message
    assert "'M1' occurs in no row" in str(e) and len(e.problems) == 1
    out = read_manifest(tiny_manifest, positive_label="GS")
    assert (out["y"] == (out["label"] == "GS")).all() and out.attrs["negative_label"] == "nonGS"


def test_duplicate_path(tiny_manifest):
    df = _csv(tiny_manifest)
    df = pd.concat([df, df.iloc[[2]]], ignore_index=True)
    e = _raises(_save(df, tiny_manifest))
    assert "row 25" in str(e) and "same file as row 3" in str(e)


def test_duplicate_content(tiny_manifest):
    df = _csv(tiny_manifest)
    src = tiny_manifest.parent / df.path[1]
    shutil.copy(src, src.with_name("copy.png"))
    extra = df.iloc[[1]].copy()
    extra["path"] = str(Path(df.path[1]).with_name("copy.png"))
    e = _raises(_save(pd.concat([df, extra], ignore_index=True), tiny_manifest))
    assert "row 25" in str(e) and "same image bytes as row 2" in str(e) and "copy.png" in str(e)


def test_slide_in_more_than_one_split(tiny_manifest):
    df = _csv(tiny_manifest)
    df["split"] = "train"
    df.loc[df.slide == "S01", "split"] = "test"
    df.loc[5, "split"] = "train"  # one S01 row in train
    e = _raises(_save(df, tiny_manifest))
    assert "slide 'S01' is in more than one split" in str(e) and "row 5" in str(e)


def test_patient_in_more_than_one_split(tiny_manifest):
    df = _csv(tiny_manifest)
    df["patient"] = df["slide"].map(lambda s: "P0" if s in ("S00", "S01") else s)
    df["split"] = np.where(df["slide"] == "S00", "test", "train")
    e = _raises(_save(df, tiny_manifest))
    assert "patient 'P0' is in more than one split" in str(e)


def test_missing_required_column(tiny_manifest):
    df = _csv(tiny_manifest).drop(columns=["slide"])
    e = _raises(_save(df, tiny_manifest))
    assert "missing required column(s) ['slide']" in str(e)


def test_label_column_optional_when_unlabeled(tiny_manifest):
    df = _csv(tiny_manifest).drop(columns=["label"])
    _save(df, tiny_manifest)
    assert "['label']" in str(_raises(tiny_manifest))
    out = read_manifest(tiny_manifest, require_labels=False)
    assert (out["y"] == -1).all() and (out["label"] == "").all()


def test_empty_label_needs_unlabeled_mode(tiny_manifest):
    df = _csv(tiny_manifest)
    df.loc[0, "label"] = ""
    _save(df, tiny_manifest)
    assert "row 1" in str(_raises(tiny_manifest))
    out = read_manifest(tiny_manifest, require_labels=False)
    assert out["y"].iloc[0] == -1


def test_empty_manifest(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text("path,label,slide\n")
    assert "no rows" in str(_raises(header_only))
    zero = tmp_path / "zero.csv"
    zero.write_text("")
    assert "empty" in str(_raises(zero))
    assert "does not exist" in str(_raises(tmp_path / "nope.csv"))


def test_every_problem_reported_at_once(tiny_manifest):
    df = _csv(tiny_manifest)
    root = tiny_manifest.parent
    (root / df.path[1]).unlink()
    (root / df.path[3]).write_bytes(b"")
    df.loc[6, "label"] = "X"
    _save(df, tiny_manifest)
    e = _raises(tiny_manifest)
    assert sorted({p.row for p in e.problems}) == [2, 4, 7]
    for r in ("row 2", "row 4", "row 7"):
        assert r in str(e)


def test_skip_mode_writes_skipped_rows(tiny_manifest, tmp_path):
    df = _csv(tiny_manifest)
    (tiny_manifest.parent / df.path[1]).unlink()
    df.loc[6, "label"] = "X"
    _save(df, tiny_manifest)
    with pytest.raises(ValueError, match="skipped_out"):
        read_manifest(tiny_manifest, on_error="skip")
    out_csv = tmp_path / "out" / "skipped.csv"
    with pytest.warns(ManifestWarning, match="2 bad row"):
        out = read_manifest(tiny_manifest, on_error="skip", skipped_out=out_csv)
    assert len(out) == 22 and out.attrs["skipped"] == 2
    sk = pd.read_csv(out_csv)
    assert list(sk["row"]) == [2, 7]
    assert "does not exist" in sk["reason"][0] and "label" in sk["reason"][1]


def test_skip_mode_cannot_skip_whole_manifest_problems(tiny_manifest, tmp_path):
    df = _csv(tiny_manifest)
    df["split"] = np.where(df.index == 0, "test", "train")
    _save(df, tiny_manifest)
    with pytest.raises(ManifestError, match="cannot be skipped"):
        read_manifest(tiny_manifest, on_error="skip", skipped_out=tmp_path / "s.csv")


def test_fingerprint_stable_and_sensitive(tiny_manifest):
    df = read_manifest(tiny_manifest)
    f = data_fingerprint(df)
    assert f == data_fingerprint(df.iloc[::-1].reset_index(drop=True))  # row order does not matter
    assert f == data_fingerprint(df.drop(columns=["sha256"]))
    relabel = df.copy()
    relabel.loc[0, "label"] = "M0"
    assert data_fingerprint(relabel) != f
    moved = df.assign(center="A")
    moved.loc[0, "center"] = "B"  # a slide moved to another centre changes the leave-one-centre-out folds
    assert data_fingerprint(moved) != data_fingerprint(df.assign(center="A"))


def test_write_manifest_refuses_different_content(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    out = tmp_path / "m.csv"
    write_manifest(df, out)
    write_manifest(df, out)  # same content: fine
    assert read_manifest(out, positive_label="M1")["sha256"].tolist() == df["sha256"].tolist()
    with pytest.raises(FileExistsError, match="refusing"):
        write_manifest(df.iloc[:3], out)


def test_positive_label_from_dataset_json(make_manifest):
    """ "" (the default) reads dataset.json beside the manifest; without one the error lists the labels."""
    from glomlib.data.manifest import read_dataset_info, resolve_positive_label, write_dataset_info

    m = make_manifest(labels=("GS", "nonGS"))
    df = read_manifest(m)
    assert df.attrs["positive_label"] == "GS" and df.attrs["negative_label"] == "nonGS"
    assert int(df["y"].sum()) == int((df["label"] == "GS").sum()) > 0
    assert resolve_positive_label(m) == "GS" and resolve_positive_label(m, "nonGS") == "nonGS"
    assert read_manifest(m, positive_label="nonGS")["y"].sum() == (df["y"] == 0).sum()  # explicit wins
    assert read_dataset_info(m)["negative_label"] == "nonGS"
    write_dataset_info(m, "GS", "nonGS")  # same content: fine
    with pytest.raises(FileExistsError, match="refusing"):
        write_dataset_info(m, "nonGS", "GS")

    bare = make_manifest(labels=("GS", "nonGS"), sidecar=False)
    with pytest.raises(ManifestError, match=r"dataset.json does not exist; labels found: (GS|nonGS) \(12\)"):
        read_manifest(bare)
    with pytest.raises(ManifestError, match="Pass positive_label"):
        resolve_positive_label(bare)


def test_unlabeled_manifest_needs_no_positive_label(make_manifest):
    import pandas as pd

    m = make_manifest(sidecar=False)
    raw = pd.read_csv(m)
    raw["label"] = ""
    raw.to_csv(m, index=False)
    df = read_manifest(m, require_labels=False)
    assert (df["y"] == -1).all()  # empty labels are unlabeled, never "positive"


def test_no_torch_import():
    import subprocess
    import sys

    code = "import sys, glomlib.data.manifest, glomlib.data.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_warnings_do_not_fail(tiny_manifest, write_png):
    df = _csv(tiny_manifest)
    write_png(tiny_manifest.parent / df.path[0], np.full((16, 16), 9, np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(read_manifest(tiny_manifest)) == 24


def test_damaged_pixels_found_by_full_check(make_manifest):
    m = make_manifest(size=64)
    df = _csv(m)
    p = m.parent / df.path[0]
    b = bytearray(p.read_bytes())
    for i in range(60, len(b) - 20):
        b[i] ^= 0x55
    p.write_bytes(bytes(b))
    assert _errors(m, full=False) == []  # header and trailer intact
    errs = _errors(m, full=True)
    assert [(e.row, e.kind) for e in errs] == [(1, "unreadable")] and "damaged" in errs[0].message
