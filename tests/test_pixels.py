"""The pixel budget (glomlib.data.pixels), checked from image headers (glomlib.data.images), refuses decompression
bombs before decoding, in ``glomlib data check``, the cache, ``predict`` and the audit."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.data.images import image_size, over_budget
from glomlib.data.pixels import DEFAULT_MAX_PIXELS, ImageTooLargeError


def write_bomb_png(path: Path, w: int = 30000, h: int = 30000) -> Path:
    """A tiny PNG (a few hundred bytes) whose header declares w x h RGB pixels (its IDAT holds only a sliver)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 64, 9)  # one filter byte + the start of row 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bomb_manifest(tmp_path, write_png):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        p = write_png(tmp_path / "img" / f"S{i % 2}-{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        rows.append({"path": str(p), "label": "M1" if i % 2 else "M0", "slide": f"S{i // 2}"})
    bomb = write_bomb_png(tmp_path / "img" / "S9-bomb.png")
    rows.insert(1, {"path": str(bomb), "label": "M1", "slide": "S9"})
    m = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    return m, bomb


def test_image_size_from_headers(tmp_path, write_png):
    import cv2

    img = np.zeros((21, 37, 3), np.uint8)
    write_png(tmp_path / "a.png", img)
    assert image_size(tmp_path / "a.png") == (37, 21)
    for ext in (".jpg", ".tif", ".bmp"):
        ok, buf = cv2.imencode(ext, img)
        (tmp_path / f"a{ext}").write_bytes(buf.tobytes())
        assert image_size(tmp_path / f"a{ext}") == (37, 21), ext
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1000 and image_size(bomb) == (30000, 30000)
    assert "30000x30000" in over_budget(bomb) and over_budget(tmp_path / "a.png") is None
    (tmp_path / "x.txt").write_text("not an image")
    assert over_budget(tmp_path / "x.txt") is None  # not an image: left to the decoder, which names the file


def test_data_check_refuses_the_bomb_naming_row_file_and_size_without_decoding(bomb_manifest, capsys, monkeypatch):
    import cv2

    from glomlib.cli import EXIT_DATA, main

    m, bomb = bomb_manifest
    sizes = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: (sizes.append(len(buf)), real(buf, flags))[1])
    rc = main(["data", "check", str(m)])
    err = capsys.readouterr().err
    assert rc == EXIT_DATA
    line = next(x for x in err.splitlines() if "30000x30000" in x)
    assert line.strip().startswith("row 2") and str(bomb) in line and "pixel budget" in line
    assert bomb.stat().st_size not in sizes  # the other images were decoded, the bomb never
    assert len(sizes) == 4


def test_cache_refuses_the_bomb_before_decoding(bomb_manifest, tmp_path):
    from glomlib.data.cache import load_images

    m, bomb = bomb_manifest
    paths = list(pd.read_csv(m)["path"])
    with pytest.raises(ImageTooLargeError) as ei:
        load_images(paths, 16, cache_dir=tmp_path / "cache")
    msg = str(ei.value)
    assert msg.startswith("row 2") and str(bomb) in msg and "30000x30000" in msg
    assert not list((tmp_path / "cache").glob("*.npy"))  # no entry, and no temp left behind
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".json"]


def test_budget_is_configurable(tmp_path, write_png, monkeypatch):
    from glomlib.data.cache import load_images

    p = write_png(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    monkeypatch.setenv("GLOMLIB_MAX_PIXELS", "100")
    with pytest.raises(ImageTooLargeError, match=r"16x16 pixels.*budget of 0\.0001 Mpx"):
        load_images([str(p)], 8, cache_dir=tmp_path / "c")
    monkeypatch.setenv("GLOMLIB_MAX_PIXELS", "256")
    assert load_images([str(p)], 8, cache_dir=tmp_path / "c").shape == (1, 8, 8, 3)
    monkeypatch.delenv("GLOMLIB_MAX_PIXELS")
    assert over_budget(p) is None and DEFAULT_MAX_PIXELS == 50_000_000


def test_predict_refuses_the_bomb(bomb_manifest, tmp_path, capsys):
    import torch

    from glomlib.cli import EXIT_DATA, main
    from glomlib.models.files import save_model
    from glomlib.models.heads import build_classifier

    m, bomb = bomb_manifest
    torch.manual_seed(0)
    model = tmp_path / "model.safetensors"
    save_model(
        build_classifier("resnet18").eval(),
        {"backbone": "resnet18", "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "positive_label": "M1"},
        model,
    )
    rc = main(["predict", "--model", str(model), "--manifest", str(m), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == EXIT_DATA and "row 2" in err and str(bomb) in err and "30000x30000" in err
    assert not (tmp_path / "p.csv").exists()


def test_audit_lists_the_bomb_as_a_skipped_row(bomb_manifest, tmp_path):
    from glomlib.review.audit import AuditConfig, prepare

    m, bomb = bomb_manifest
    df, out = prepare(AuditConfig.from_params(data=str(m), out=str(tmp_path / "audit"), positive_label="M1"))
    assert str(bomb) not in set(df["path"]) and len(df) == 4
    sk = pd.read_csv(out / "manifest_skipped.csv", dtype=str, keep_default_na=False)
    row = sk[sk["row"] == "2"].iloc[0]
    assert "too-large" in row["reason"] and "30000x30000" in row["reason"]
