"""``glomlib data check / from-folder / fetch`` from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.cli import main


def run(*argv) -> int:
    return main(["data", *map(str, argv)])


def test_check_ok(tiny_manifest, capsys):
    assert run("check", tiny_manifest) == 0
    assert "OK: 24 images" in capsys.readouterr().err


def test_check_names_every_broken_row(tiny_manifest, capsys):
    df = pd.read_csv(tiny_manifest, dtype=str)
    root = tiny_manifest.parent
    (root / df.path[0]).unlink()
    (root / df.path[9]).write_bytes(b"")
    p = root / df.path[12]
    p.write_bytes(p.read_bytes()[:40])
    df.loc[20, "label"] = "M9"
    df.to_csv(tiny_manifest, index=False)
    assert run("check", tiny_manifest) == 1
    err = capsys.readouterr().err
    for row, name in ((1, df.path[0]), (10, df.path[9]), (13, df.path[12]), (21, df.path[20])):
        assert f"row {row} ({name})" in err, (row, err)
    assert "4 error(s)" in err and "--skip-bad" in err


def test_check_skip_bad_writes_reasons_next_to_outputs(tiny_manifest, tmp_path, capsys):
    df = pd.read_csv(tiny_manifest, dtype=str)
    (tiny_manifest.parent / df.path[4]).unlink()
    out = tmp_path / "clean" / "manifest.csv"
    assert run("check", tiny_manifest, "--skip-bad", "--out", out) == 0
    skipped = out.parent / "manifest.skipped.csv"
    sk = pd.read_csv(skipped)
    assert list(sk.row) == [5] and "does not exist" in sk.reason[0]
    assert len(pd.read_csv(out)) == 23
    assert run("check", out) == 0  # the cleaned manifest is valid
    assert "skipped 1 bad row" in capsys.readouterr().err


def test_check_skip_bad_without_out_writes_beside_manifest(tiny_manifest):
    df = pd.read_csv(tiny_manifest, dtype=str)
    df.loc[2, "label"] = "odd"
    df.to_csv(tiny_manifest, index=False)
    assert run("check", tiny_manifest, "--skip-bad") == 0
    assert (tiny_manifest.parent / "manifest.skipped.csv").exists()


def test_check_skip_bad_refuses_unskippable(tiny_manifest, capsys):
    df = pd.read_csv(tiny_manifest, dtype=str).drop(columns=["slide"])
    df.to_csv(tiny_manifest, index=False)
    assert run("check", tiny_manifest, "--skip-bad") == 1
    assert "missing required column" in capsys.readouterr().err


def test_check_missing_manifest(tmp_path, capsys):
    assert run("check", tmp_path / "none.csv") == 1
    assert "does not exist" in capsys.readouterr().err


def test_from_folder(tmp_path, write_png, capsys):
    root = tmp_path / "patches"
    for label in ("M1", "M0"):
        for i in range(3):
            write_png(
                root / label / f"LAB_slide{i}-{label}{i}.png", np.full((8, 8, 3), 10 * i, np.uint8) + (label == "M1")
            )
    out = tmp_path / "m" / "manifest.csv"
    assert run("from-folder", root, "--out", out, "--center-regex", "^([^_]+)_") == 0
    df = pd.read_csv(out, dtype=str)
    assert len(df) == 6 and set(df.label) == {"M0", "M1"}
    assert set(df.slide) == {"LAB_slide0", "LAB_slide1", "LAB_slide2"} and set(df.center) == {"LAB"}
    assert not Path(df.path[0]).is_absolute()
    assert run("from-folder", root, "--out", out, "--center-regex", "^([^_]+)_") == 0  # same content: ok
    assert run("from-folder", root, "--out", out) == 3  # different content: refused, exit 3 = output exists
    assert "refusing to overwrite" in capsys.readouterr().err
    out2 = tmp_path / "m2.csv"
    assert run("from-folder", root, "--out", out2, "--slide-regex", r"^(?P<slide>[^_]+)_") == 0
    assert set(pd.read_csv(out2).slide) == {"LAB"}


def test_from_folder_unmatched_names_listed(tmp_path, write_png, capsys):
    root = tmp_path / "patches"
    write_png(root / "M1" / "noindex.png", np.zeros((8, 8, 3), np.uint8))
    write_png(root / "M0" / "alsonone.png", np.ones((8, 8, 3), np.uint8))
    assert run("from-folder", root, "--out", tmp_path / "m.csv") == 1
    err = capsys.readouterr().err
    assert "noindex.png" in err and "alsonone.png" in err and "--slide-regex" in err
    assert not (tmp_path / "m.csv").exists()


def test_fetch_cli_mirror(tmp_path, write_png, capsys):
    from conftest import build_tiny_mirror

    mirror = tmp_path / "mirror"
    sums = build_tiny_mirror(mirror)
    assert run("fetch", "glomeruli-pas", "--mirror", mirror, "--sums", sums, "--out", tmp_path / "o") == 0
    assert (tmp_path / "o" / "manifest.csv").exists()
    assert run("fetch", "glomeruli-pas", "--mirror", tmp_path / "none", "--out", tmp_path / "o2") == 1
    assert "no Patches/Raw" in capsys.readouterr().err


@pytest.mark.realdata
def test_fetch_and_check_real_data_console_script(shared_data, tmp_path):
    exe = Path(sys.executable).with_name("glomlib")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "glomlib.cli"]
    out = tmp_path / "gp"
    r = subprocess.run(
        cmd + ["data", "fetch", "glomeruli-pas", "--mirror", str(shared_data), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "794 verified images" in r.stderr and "25 slides" in r.stderr and "152 images" in r.stderr
    r = subprocess.run(
        cmd + ["data", "check", str(out / "manifest.csv"), "--positive-label", "GS"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "OK: 794 images" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["fetch", "other-dataset"],
        ["check", "m.csv", "--folds", "-1"],
        ["from-folder", "root"],
        ["check"],
        ["apply-review", "r.csv", "--out", "x.csv"],
        ["check", "m.csv", "--quick", "maybe"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run(*argv)
    assert e.value.code == 2


def test_help_lists_every_option_with_its_meaning(capsys):
    for sub, options in (
        ("check", ["--positive-label", "--skip-bad", "--label-map", "--folds"]),
        ("from-folder", ["--out", "--slide-regex", "--center-regex", "--positive-label"]),
        ("fetch", ["--mirror", "--no-mirror", "--sums"]),
        ("apply-review", ["--reviewer", "--rater"]),
    ):
        with pytest.raises(SystemExit) as e:
            run(sub, "--help")
        out = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0 and all(o in out for o in options), (sub, out)
