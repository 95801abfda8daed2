"""glomeruli-pas fetch: mirror (real data), partial mirror, checksum mismatch, file:// download + extract."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import build_tiny_mirror

from glomlib.data.manifest import read_manifest
from glomlib.data.public import (
    COMMIT,
    SUMS_RESOURCE,
    DatasetError,
    ensure_default_manifest,
    fetch_glomeruli_pas,
    find_mirror,
    read_sums,
)


@pytest.mark.realdata
def test_fetch_real_mirror(shared_data, tmp_path, capsys):
    out = tmp_path / "gp"
    m = fetch_glomeruli_pas(out=out, mirror=shared_data, progress=False)
    err = capsys.readouterr().err
    assert "CC BY-NC-SA 4.0" in err and "Weishaupt" in err and "Bueno" in err
    df = read_manifest(m, positive_label="GS")
    assert len(df) == 794 and df.slide.nunique() == 25 and set(df.center) == {"SAS", "SESCAM", "VUHSK"}
    assert (df.y == 1).sum() == 160 and (df["mask"] != "").all()
    sums = read_sums()
    for p, h in zip(df.path, df.sha256):
        assert sums[str(Path(p).resolve().relative_to(shared_data.resolve()))] == h
    raw = pd.read_csv(m, dtype=str)
    assert not Path(raw.path[0]).is_absolute()  # relative to the manifest folder; images stay in the mirror
    assert (out / "LICENSE").read_text().startswith("glomeruli-pas data license: CC BY-NC-SA 4.0")
    assert "doi:10.1016/j.compbiomed.2025.110719" in (out / "CITATION.txt").read_text()
    missing = (out / "missing_files.txt").read_text().split()
    assert len(missing) == 304 and sum("/Images/" in r for r in missing) == 152
    before = m.read_bytes()
    assert fetch_glomeruli_pas(out=out, mirror=shared_data, verbose=False) == m  # idempotent
    assert m.read_bytes() == before


def test_project_sums_copy_matches_upstream_format():
    sums = read_sums(SUMS_RESOURCE)
    assert len(sums) == 1892 and sum("/Images/" in k for k in sums) == 946


def test_partial_mirror_reported_not_fatal(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    sums = build_tiny_mirror(mirror)
    m = fetch_glomeruli_pas(out=tmp_path / "out", mirror=mirror, sums=sums, progress=False)
    assert "1 file(s) listed upstream are absent" in capsys.readouterr().err
    assert (tmp_path / "out" / "missing_files.txt").read_text().strip() == "Patches/Raw/Images/GS/ABSENT_1_001-0.png"
    df = read_manifest(m, positive_label="GS")
    assert len(df) == 6 and set(df.center) == {"SAS", "VUHSK"}
    assert df.slide.iloc[0].endswith("_001")
    assert "test license text" in (tmp_path / "out" / "LICENSE").read_text()


def test_fetch_writes_dataset_json_so_defaults_find_the_positive_label(tmp_path):
    import json

    mirror = tmp_path / "mirror"
    sums = build_tiny_mirror(mirror)
    m = fetch_glomeruli_pas(out=tmp_path / "out", mirror=mirror, sums=sums, progress=False, verbose=False)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["positive_label"] == "GS" and info["negative_label"] == "nonGS" and info["dataset"] == "glomeruli-pas"
    df = read_manifest(m)  # positive_label "" (the default): read from dataset.json
    assert df.attrs["positive_label"] == "GS" and df["y"].tolist() == (df["label"] == "GS").astype(int).tolist()
    before = (tmp_path / "out" / "dataset.json").read_bytes()
    fetch_glomeruli_pas(out=tmp_path / "out", mirror=mirror, sums=sums, progress=False, verbose=False)
    assert (tmp_path / "out" / "dataset.json").read_bytes() == before  # idempotent


def test_checksum_mismatch_names_the_file(tmp_path):
    mirror = tmp_path / "mirror"
    sums = build_tiny_mirror(mirror)
    bad = mirror / "Patches/Raw/Images/nonGS/VUHSK_nonGS_001-0.png"
    bad.write_bytes(bad.read_bytes() + b"x")
    with pytest.raises(DatasetError, match="VUHSK_nonGS_001-0.png") as e:
        fetch_glomeruli_pas(out=tmp_path / "out", mirror=mirror, sums=sums, verbose=False)
    assert "1 file(s)" in str(e.value)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_mirror_order_and_errors(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    build_tiny_mirror(mirror)
    monkeypatch.setenv("GLOMLIB_MIRROR", str(mirror))
    assert find_mirror() == mirror.resolve()
    assert find_mirror(tmp_path / "mirror") == mirror.resolve()
    with pytest.raises(DatasetError, match="no Patches/Raw"):
        find_mirror(tmp_path / "nowhere")
    monkeypatch.setenv("GLOMLIB_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="GLOMLIB_MIRROR"):
        find_mirror()
    assert find_mirror(False) is None


def test_refuses_to_overwrite_different_manifest(tmp_path):
    mirror = tmp_path / "mirror"
    sums = build_tiny_mirror(mirror)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("path,label,slide\nx.png,GS,s\n")
    with pytest.raises(FileExistsError, match="refusing"):
        fetch_glomeruli_pas(out=out, mirror=mirror, sums=sums, verbose=False)


def test_download_path_file_url(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    sums = build_tiny_mirror(src)
    archive = tmp_path / f"{COMMIT}.zip"
    top = f"GlobalGlomerulosclerosisClustering-{COMMIT}"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, f"{top}/{p.relative_to(src)}")
        z.writestr(f"{top}/README.md", "not extracted")
    monkeypatch.delenv("GLOMLIB_MIRROR", raising=False)
    out = tmp_path / "out"
    m = fetch_glomeruli_pas(out=out, mirror=False, url=archive.as_uri(), sums=sums)
    err = capsys.readouterr().err
    assert "downloading" in err
    df = read_manifest(m, positive_label="GS")
    assert len(df) == 6 and all(Path(p).is_relative_to(out / "source") for p in df.path)
    assert not (out / "source" / "README.md").exists()
    assert (out / "download" / archive.name).exists()
    # second run reuses the extraction (no download), same manifest
    archive.unlink()
    assert fetch_glomeruli_pas(out=out, mirror=False, url=archive.as_uri(), sums=sums, verbose=False) == m


def test_download_failure_is_clear(tmp_path):
    with pytest.raises(DatasetError, match="could not download"):
        fetch_glomeruli_pas(out=tmp_path / "o", mirror=False, url=(tmp_path / "none.zip").as_uri(), verbose=False)


def test_ensure_default_manifest(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    build_tiny_mirror(mirror)
    (tmp_path / "x.csv").write_text("path,label,slide\n")
    assert ensure_default_manifest(tmp_path / "x.csv") == tmp_path / "x.csv"  # existing: returned as is
    with pytest.raises(FileNotFoundError, match="glomlib data fetch"):
        ensure_default_manifest(tmp_path / "other.csv")


@pytest.mark.realdata
def test_ensure_default_manifest_builds_from_mirror(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GLOMLIB_MIRROR", str(shared_data))
    m = ensure_default_manifest(tmp_path / "gp" / "manifest.csv")
    assert m.exists() and len(pd.read_csv(m)) == 794
