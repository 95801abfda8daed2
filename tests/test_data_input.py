"""Issue 19, data side: honest input. Label values that are not class names, slides in two centres or patients,
``from-folder`` on real-world folders (sub-folders, macOS files, names with spaces), and data/README's commands."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.cli import main
from glomlib.data.manifest import ManifestError, read_manifest

README = Path(__file__).resolve().parents[1] / "data" / "README.md"


def _data(capsys, *argv) -> tuple[int, str]:
    rc = main(["data", *map(str, argv)])
    return rc, capsys.readouterr().err


def _relabel(m: Path, mapping: dict[str, str], **cols) -> Path:
    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    df["label"] = df["label"].map(mapping)
    for c, f in cols.items():
        df[c] = [f(i, r) for i, r in df.iterrows()]
    df.to_csv(m, index=False)
    (m.parent / "dataset.json").unlink(missing_ok=True)
    return m


# ------------------------------------------------------------------ labels that are not class names (defect 4)
@pytest.mark.parametrize("pos,neg", [("1", "0"), ("true", "false"), ("yes", "no")])
def test_labels_that_are_not_class_names_are_refused_with_the_fix(tiny_manifest, capsys, pos, neg):
    m = _relabel(tiny_manifest, {"M1": pos, "M0": neg})
    for extra in ([], ["--positive-label", pos]):  # defect 4: --positive-label 1 passed, trained, failed at save
        rc, err = _data(capsys, "check", m, *extra)
        assert rc == 1 and "not class names" in err, err
        assert f"--label-map {pos}=<positive>,{neg}=<negative>" in err and "--out" in err
        assert "which label is positive" not in err  # one clear verdict, not two contradicting fixes
    with pytest.raises(ManifestError, match="not class names"):  # every step (fine-tune) refuses it at start
        read_manifest(m, positive_label=pos)


def test_label_map_writes_a_named_manifest_and_records_the_mapping(tiny_manifest, tmp_path, capsys):
    m = _relabel(tiny_manifest, {"M1": "1", "M0": "0"})
    for bad in (["--label-map", "1=GS,0=nonGS"], ["--label-map", "1=2", "--out", tmp_path / "x.csv"]):
        with pytest.raises(SystemExit) as e:  # a usage error: needs --out; '2' is no class name
            _data(capsys, "check", m, *bad)
        assert e.value.code == 2
    out = tmp_path / "named" / "manifest.csv"
    rc, err = _data(capsys, "check", m, "--label-map", "1=GS,0=nonGS", "--positive-label", "GS", "--out", out)
    assert rc == 0 and "renamed by --label-map" in err, err
    assert set(pd.read_csv(out, dtype=str)["label"]) == {"GS", "nonGS"}
    info = json.loads((out.parent / "dataset.json").read_text())
    assert info["positive_label"] == "GS" and info["negative_label"] == "nonGS"
    assert info["label_map"] == {"1": "GS", "0": "nonGS"} and info["label_map_from"] == str(m.resolve())
    rc, err = _data(capsys, "check", out)  # usable as is: the positive label comes from its dataset.json
    assert rc == 0 and "OK: 24 images" in err


def test_label_map_keeps_the_positive_named_by_dataset_json(tiny_manifest, tmp_path, capsys):
    m = _relabel(tiny_manifest, {"M1": "1", "M0": "0"})
    (m.parent / "dataset.json").write_text('{"positive_label": "1", "negative_label": "0"}')
    out = tmp_path / "n.csv"
    assert _data(capsys, "check", m, "--label-map", "0=nonGS,1=GS", "--out", out)[0] == 0
    df = read_manifest(out)
    assert df.attrs["positive_label"] == "GS" and set(df.loc[df.y == 1, "label"]) == {"GS"}


def test_labels_with_surrounding_spaces_are_read_as_names_and_said(tiny_manifest, capsys):
    df = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False)
    df.loc[df.label == "M1", "label"] = "M1  "
    df.to_csv(tiny_manifest, index=False)
    rc, err = _data(capsys, "check", tiny_manifest)
    assert rc == 0 and "label 'M1  ' has surrounding spaces" in err and "read as 'M1'" in err, err


def test_unlabeled_data_with_number_labels_is_only_warned(tiny_manifest, capsys):
    m = _relabel(tiny_manifest, {"M1": "1", "M0": "0"})
    with pytest.warns(UserWarning, match="not class names"):
        df = read_manifest(m, require_labels=False, positive_label="1")
    assert len(df) == 24 and any("not class names" in w for w in df.attrs["warnings"])


# ----------------------------------------------------------------- slides in two centres / patients (defect 9)
def test_slide_in_two_centres_is_named(tiny_manifest, capsys):
    df = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False)
    s = df.slide[0]
    df.loc[df.index[df.slide == s][-1], "center"] = "Z"
    df.to_csv(tiny_manifest, index=False)
    rc, err = _data(capsys, "check", tiny_manifest)
    assert rc == 1 and f"slide {s!r} is assigned to several centres" in err and "leave-one-centre-out" in err, err
    assert _data(capsys, "check", tiny_manifest, "--skip-bad")[0] == 1  # cannot be skipped row by row


def test_slide_in_two_patients_is_named(tiny_manifest, capsys):
    df = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False)
    df["patient"] = ["P" + s for s in df.slide]
    s = df.slide[3]
    df.loc[df.index[df.slide == s][0], "patient"] = "P-other"
    df.to_csv(tiny_manifest, index=False)
    rc, err = _data(capsys, "check", tiny_manifest)
    assert rc == 1 and f"slide {s!r} is assigned to several patients" in err, err


# ----------------------------------------------------------------------------------- from-folder (friction)
def _img(write_png, path: Path, v: int) -> None:
    write_png(path, np.full((8, 8, 3), v, np.uint8))


def test_from_folder_walks_sub_folders_ignores_macos_files_keeps_names(tmp_path, write_png, capsys):
    root = tmp_path / "patches"
    for i in range(3):
        _img(write_png, root / "GS" / f"A_s{i}-1.png", 10 + i)
        _img(write_png, root / "non GS" / f"A_s{i}-2.png", 60 + i)
        _img(write_png, root / "GS" / "more" / f"A_s{i}-3.png", 110 + i)  # a sub-folder of a label folder
        (root / "GS" / f"._A_s{i}-1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource forks
        (root / "non GS" / f"._A_s{i}-2.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "__MACOSX" / "GS").mkdir(parents=True)
    (root / "__MACOSX" / "GS" / "._A_s0-1.png").write_bytes(b"\x00\x05")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "notes").mkdir()
    (root / "notes" / "read me.txt").write_text("not an image")
    _img(write_png, root / "stray-1.png", 5)
    out = tmp_path / "m" / "manifest.csv"
    rc, err = _data(capsys, "from-folder", root, "--out", out, "--positive-label", "GS")
    assert rc == 0, err
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(df) == 9 and df.label.value_counts().to_dict() == {"GS": 6, "non GS": 3}
    assert not any("._" in p or "MACOSX" in p for p in df.path)
    info = json.loads((out.parent / "dataset.json").read_text())
    assert (info["positive_label"], info["negative_label"]) == ("GS", "non GS")  # was an empty negative label
    assert "GS/more" in err and "notes/" in err and "stray-1.png" in err and "ignored" in err
    assert _data(capsys, "check", out, "--folds", "3")[0] == 0


@pytest.mark.parametrize("names", [("0", "1"), ("GS ", "nonGS"), ("true", "false")])
def test_from_folder_refuses_folder_names_that_cannot_be_labels(tmp_path, write_png, capsys, names):
    root = tmp_path / "p"
    for k, name in enumerate(names):
        _img(write_png, root / name / f"s{k}-1.png", 40 * k)
    rc, err = _data(capsys, "from-folder", root, "--out", tmp_path / "m.csv")
    assert rc == 1 and "rename it" in err and not (tmp_path / "m.csv").exists(), err


def test_from_folder_positive_label_needs_a_pair(tmp_path, write_png, capsys):
    root = tmp_path / "p"
    for k, name in enumerate(("GS", "nonGS", "other")):
        _img(write_png, root / name / f"s{k}-1.png", 40 * k)
    rc, err = _data(capsys, "from-folder", root, "--out", tmp_path / "m.csv", "--positive-label", "GS")
    assert rc == 1 and "needs exactly two" in err and not (tmp_path / "dataset.json").exists()
    rc, err = _data(capsys, "from-folder", root, "--out", tmp_path / "m.csv", "--positive-label", "XX")
    assert rc == 1 and "is not a label folder" in err


# ------------------------------------------------------------------------------ data/README runs as written
def _readme_commands() -> list[list[str]]:
    text = README.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    lines = [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("glomlib data ")]


def test_readme_documents_positive_label_and_label_map():
    text = README.read_text()
    checks = [c for c in _readme_commands() if c[1] == "check"]
    assert any("--positive-label" in c for c in checks) and any("--label-map" in c for c in checks)
    assert "--positive-label" in text.split("## Bring your own data")[1]


def _mirror(root: Path, write_png) -> Path:
    """A glomeruli-pas-like mirror with 6 slides per class (enough for 5 slide-grouped folds) + its sums file."""
    rng, sums = np.random.default_rng(1), []
    for s in range(12):
        label = ("GS", "nonGS")[s % 2]
        for sub in (f"Images/{label}", "Masks"):
            rel = f"Patches/Raw/{sub}/{('SAS', 'VUHSK')[s % 3 == 0]}_{s}_001-1.png"
            p = write_png(root / rel, rng.integers(0, 255, (8, 8, 3), np.uint8))
            sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
    (root.parent / "sums.txt").write_text("".join(sums))
    return root.parent / "sums.txt"


def test_every_readme_data_command_runs_as_written(tmp_path, write_png, monkeypatch, capsys):
    """Run in a fresh project folder: patches/ laid out as the README says, the mirror from $GLOMLIB_MIRROR."""
    sums = _mirror(tmp_path / "mirror", write_png)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("GLOMLIB_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("GLOMLIB_ROOT", str(project))
    monkeypatch.chdir(project)
    rng = np.random.default_rng(0)
    for s in range(6):
        for k, label in enumerate(("M1", "M0", "M1", "M0")):
            write_png(Path("patches") / label / f"LAB_s{s}-{k}.png", rng.integers(0, 255, (16, 16, 3), np.uint8))
    commands = _readme_commands()
    assert {c[1] for c in commands} == {"check", "from-folder", "fetch", "apply-review"}
    for argv in commands:
        if argv[1] == "apply-review":  # needs a filled review of a fine-tune run: its options must parse
            from glomlib.core.config import parse_args
            from glomlib.data.cli import ApplyReviewConfig

            cfg = parse_args(ApplyReviewConfig, argv[2:], "glomlib data apply-review")
            assert cfg.out and cfg.manifest
            continue
        if argv[1] == "fetch" and "--sums" not in argv:
            argv = [*argv, "--sums", str(sums)]  # the tiny mirror's checksums (the real list is the default)
        rc, err = _data(capsys, *argv[1:])
        assert rc == 0, (argv, err)
