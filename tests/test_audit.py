"""Tests for glomlib.review.audit: quality flags, duplicates, stain statistics, on generated images and real patches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glomlib.core.config import ConfigError
from glomlib.review import audit

S = 64  # generated image size


def _texture(seed: int, size: int = S) -> np.ndarray:
    """A tissue-like RGB image: pink background with dark 'nuclei' blobs and fine texture."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (200, 120, 180)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(25):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(2, 5))]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (70, 40, 120)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, fmt: str = "PNG", **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)
    return str(path)


def _df(paths, labels=None, slides=None, centers=None, masks=None) -> pd.DataFrame:
    n = len(paths)
    labels = labels or ["M0"] * n
    return pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "label": labels,
            "y": [int(lab == "M1") for lab in labels],
            "slide": slides or [f"s{i}" for i in range(n)],
            "patient": slides or [f"s{i}" for i in range(n)],
            "center": centers or ["A"] * n,
            "split": [""] * n,
            "mask": masks or [""] * n,
            "row": np.arange(1, n + 1),
        }
    )


def _cfg(**kw) -> audit.AuditConfig:
    base = dict(stats_size=S, blur_min=50.0, background_max=0.5, near_dup_distance=8, rotated_dup_distance=4)
    base.update(kw)
    return audit.AuditConfig.from_params(**base)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="background_max"):
        audit.AuditConfig.from_params(background_max=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        audit.AuditConfig.from_params(blur_threshold=3)


def test_blurred_image_is_flagged_and_sharp_is_not(tmp_path):
    import cv2

    sharp = _texture(0)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    df = _df([_save(tmp_path / "sharp.png", sharp), _save(tmp_path / "blur.png", blurred)])
    scan = audit.scan_images(df, _cfg())
    assert scan.table.loc[0, "blur_lapvar"] > 10 * scan.table.loc[1, "blur_lapvar"]
    flags = audit.quality_flags(scan, _cfg())
    blur = flags[flags.reason == "blur"]
    assert blur["path"].tolist() == [df.path[1]]
    assert list(flags.columns) == audit.FLAG_COLUMNS


def test_cohort_and_class_confounders_state_what_separates_the_classes(tmp_path):
    """The cohort table counts per centre and in all; the confounders find the blurred positive class and say
    which class and centre the blur flags come from (the numbers page 01's summary is written from)."""
    import cv2

    sharp = [_save(tmp_path / f"n{i}.png", _texture(10 + i)) for i in range(3)]
    soft = [_save(tmp_path / f"p{i}.png", cv2.GaussianBlur(_texture(20 + i), (0, 0), 3)) for i in range(2)]
    df = _df(sharp + soft, labels=["M0"] * 3 + ["M1"] * 2, slides=["a", "a", "b", "c", "c"], centers=list("XXYYY"))
    coh = audit.cohort(df).set_index("center")
    assert coh.loc["X", ["slides", "positive", "negative", "glomeruli"]].tolist() == [1, 0, 2, 2]
    assert coh.loc["Y", ["slides", "positive", "negative"]].tolist() == [2, 2, 1]
    assert coh.loc["All centres", "share_positive"] == pytest.approx(0.4) and coh.index[-1] == "All centres"
    assert audit.cohort(df, patients=False)["patients"].isna().all()  # not recorded: no number made up
    scan = audit.scan_images(df, _cfg())
    conf = audit.class_confounders(scan.table, audit.quality_flags(scan, _cfg()))
    assert conf["sharpness_per_class"]["M0"] > 10 * conf["sharpness_per_class"]["M1"]
    assert set(conf["sharpness_per_centre"]["Y"]) == {"M0", "M1"} and set(conf["sharpness_per_centre"]["X"]) == {"M0"}
    assert conf["blur_flags"] == [{"label": "M1", "center": "Y", "images": 2}]


def test_background_image_is_flagged(tmp_path):
    img = _texture(1)
    empty = img.copy()
    empty[:, 16:] = 245  # 75 % near-white
    df = _df([_save(tmp_path / "a.png", img), _save(tmp_path / "empty.png", empty)])
    flags = audit.quality_flags(audit.scan_images(df, _cfg()), _cfg())
    bg = flags[flags.reason == "background"]
    assert bg["path"].tolist() == [df.path[1]]
    assert 0.7 < bg["value"].iloc[0] < 0.8


def test_exact_duplicate_found_and_across_folds(tmp_path):
    a = _save(tmp_path / "a.png", _texture(2))
    b = tmp_path / "copy_of_a.png"
    b.write_bytes(Path(a).read_bytes())
    c = _save(tmp_path / "c.png", _texture(3))
    df = _df([a, str(b), c], labels=["M0", "M1", "M0"])
    scan = audit.scan_images(df, _cfg())
    pairs = audit.find_duplicates(scan, 8, folds=np.array([0, 1, 0]))
    assert len(pairs) == 1
    r = pairs.iloc[0]
    assert r.kind == "exact" and r.distance == 0 and r.across_folds and not r.same_label
    flags = audit.quality_flags(scan, _cfg(), pairs)
    reasons = set(flags.reason)
    assert {"exact_duplicate", "duplicate_across_folds", "label_conflict"} <= reasons
    assert set(flags.loc[flags.reason == "exact_duplicate", "path"]) == {a, str(b)}
    assert audit.duplicate_groups(pairs) == [sorted([a, str(b)])]


def test_near_duplicate_reencoded_and_brightened(tmp_path):
    base = _texture(4, 96)
    a = _save(tmp_path / "a.png", base)
    bright = np.clip(base.astype(int) + 12, 0, 255).astype(np.uint8)
    b = _save(tmp_path / "b.jpg", bright, fmt="JPEG", quality=80)  # re-encoded + brightened copy
    others = [_save(tmp_path / f"o{i}.png", _texture(10 + i, 96)) for i in range(4)]
    df = _df([a, b, *others])
    scan = audit.scan_images(df, _cfg(stats_size=96))
    pairs = audit.find_duplicates(scan, 8)
    assert len(pairs) == 1, pairs
    assert {pairs.path_a[0], pairs.path_b[0]} == {a, b}
    assert pairs.kind[0] == "near" and pairs.distance[0] <= 4
    assert set(audit.format_table(scan.table)["format"]) == {"PNG", "JPEG"}


def test_rotated_copy_found_only_with_rotation_check(tmp_path):
    base = _texture(5, 96)
    a = _save(tmp_path / "a.png", base)
    b = _save(tmp_path / "rot.png", np.ascontiguousarray(np.rot90(base)))
    df = _df([a, b])
    with_rot = audit.find_duplicates(audit.scan_images(df, _cfg(stats_size=96)), 8, rotated_distance=4)
    assert len(with_rot) == 1 and with_rot.distance[0] <= 4
    no_rot = audit.find_duplicates(
        audit.scan_images(df, _cfg(stats_size=96, rotated_dup_distance=-1)), 8, rotated_distance=-1
    )
    assert len(no_rot) == 0


def test_stain_outlier_flagged_within_its_centre(tmp_path):
    paths, centres = [], []
    for i in range(24):  # centre B is uniformly darker: not an outlier by itself
        img = _texture(20 + i).astype(np.float32)
        dark = i >= 12
        img = img * (0.6 if dark else 1.0)
        paths.append(_save(tmp_path / f"{i}.png", img.astype(np.uint8)))
        centres.append("B" if dark else "A")
    outlier = (_texture(99).astype(np.float32) * 0.35).astype(np.uint8)  # very dark patch in centre A
    paths.append(_save(tmp_path / "outlier.png", outlier))
    centres.append("A")
    df = _df(paths, centers=centres)
    scan = audit.scan_images(df, _cfg())
    flags = audit.quality_flags(scan, _cfg(stain_z=4.0))
    stain = flags[flags.reason.str.startswith("stain")]
    assert stain["path"].tolist() == [paths[-1]]
    assert stain["reason"].iloc[0] == "stain_high"
    summ = audit.stain_summary(scan.table)
    assert summ.loc["B", "od_total"] > summ.loc["A", "od_total"]
    hists = audit.od_histograms(scan)
    assert set(hists) == {"A", "B"} and np.allclose(hists["A"].sum(axis=1), 1)


def test_unreadable_file_flagged_not_fatal(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = _save(tmp_path / "good.png", _texture(6))
    df = _df([str(bad), good])
    scan = audit.scan_images(df, _cfg())
    assert scan.table.loc[0, "error"] and not scan.table.loc[1, "error"]
    flags = audit.quality_flags(scan, _cfg())
    assert flags.loc[flags.reason == "unreadable", "path"].tolist() == [str(bad)]
    assert "UNREADABLE" in set(audit.format_table(scan.table)["format"])


def test_mask_areas_and_small_mask_flag(tmp_path):
    img = _save(tmp_path / "i.png", _texture(7))
    m_big = np.zeros((S, S), np.uint8)
    m_big[8:56, 8:56] = 255
    m_tiny = np.zeros((S, S), np.uint8)
    m_tiny[0:4, 0:4] = 255
    mb = _save(tmp_path / "mb.png", m_big)
    mt = _save(tmp_path / "mt.png", m_tiny)
    df = _df([img, img, img], masks=[mb, mt, ""])
    area = audit.mask_areas(df, S)
    assert area[0] == pytest.approx(48 * 48 / S / S) and area[1] == pytest.approx(16 / S / S) and np.isnan(area[2])
    scan = audit.scan_images(df, _cfg())
    flags = audit.quality_flags(scan, _cfg(), None, area)
    assert flags.loc[flags.reason == "mask_small", "row"].tolist() == [2]


def test_prepare_keeps_content_duplicates_and_writes_outputs(make_manifest, tmp_path):
    manifest = Path(make_manifest())
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    dup = m.iloc[[0]].copy()
    src = manifest.parent / dup["path"].iloc[0]
    copy = src.with_name("copy_" + src.name)
    copy.write_bytes(src.read_bytes())
    dup["path"] = os.path.relpath(copy, manifest.parent)
    pd.concat([m, dup]).to_csv(manifest, index=False)
    cfg = audit.AuditConfig.from_params(data=str(manifest), out=str(tmp_path / "out"), stats_size=16)
    from glomlib.data.manifest import ManifestWarning

    with pytest.warns(ManifestWarning, match="skipped"):
        df, out = audit.prepare(cfg)
    assert len(df) == len(m) + 1  # the byte-identical copy is kept for the duplicate analysis
    assert (out / "manifest_skipped.csv").exists() and (out / "provenance.json").exists()
    scan = audit.scan_images(df, cfg)
    pairs = audit.find_duplicates(scan, cfg.near_dup_distance, None, cfg.rotated_dup_distance)
    assert (pairs.kind == "exact").sum() == 1
    flags = pd.concat([audit.manifest_flags(out, df), audit.quality_flags(scan, cfg, pairs)], ignore_index=True)
    assert "manifest" in set(flags.reason) and "exact_duplicate" in set(flags.reason)
    paths = audit.write_outputs(out, scan, flags, pairs, audit.summarise(df, scan, flags, pairs))
    written = pd.read_csv(paths["flags"])
    assert list(written.columns) == audit.FLAG_COLUMNS and len(written) == len(flags)
    with pytest.raises(FileExistsError):
        audit.prepare(cfg)  # never overwrite an earlier audit


@pytest.mark.realdata
def test_real_patches_stain_and_figures(shared_data, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    raw = shared_data / "Patches" / "Raw"
    rows = []
    for centre in ("SAS", "SESCAM", "VUHSK"):
        for lab in ("GS", "nonGS"):
            for p in sorted((raw / "Images" / lab).glob(f"{centre}_*.png"))[:5]:
                slide = p.stem.rsplit("-", 1)[0]
                rows.append((str(p), lab, slide, centre, str(raw / "Masks" / p.name)))
    paths, labels, slides, centres, masks = map(list, zip(*rows))
    df = _df(paths, labels=labels, slides=slides, centers=centres, masks=masks)
    cfg = audit.AuditConfig.from_params(stats_size=96, positive_label="GS")
    scan = audit.scan_images(df, cfg)
    assert (scan.table["error"] == "").all()
    assert set(zip(scan.table.width, scan.table.height, scan.table["mode"])) == {(224, 224, "RGB")}
    summ = audit.stain_summary(scan.table)
    assert summ.loc["SESCAM", "od_total"] > summ.loc["VUHSK", "od_total"]  # SESCAM stains darker (README)
    pairs = audit.find_duplicates(scan, cfg.near_dup_distance, None, cfg.rotated_dup_distance)
    assert not (pairs.get("kind", pd.Series(dtype=str)) == "exact").any()
    area = audit.mask_areas(df, 64)
    assert ((area > 0.05) & (area <= 1)).all()
    flags = audit.quality_flags(scan, cfg, pairs, area)
    assert flags["path"].nunique() < len(df) / 2  # sensible thresholds do not flag half the data
    counts = audit.counts(df)
    assert counts["by_center"]["total"].sum() == len(df)
    for name, fig in {
        "m": audit.montage_by(df, "center", 4),
        "b": audit.channel_boxplots(scan.table),
        "o": audit.od_histogram_figure(audit.od_histograms(scan)),
        "q": audit.quality_histograms(scan.table, cfg),
        "a": audit.mask_area_figure(df, area),
    }.items():
        from glomlib.evaluate import plots

        assert plots.save_figure(fig, tmp_path, name).stat().st_size > 5000
        matplotlib.pyplot.close(fig)


def _robust_z_reference(values: pd.Series, groups: pd.Series, min_group: int = 10) -> pd.Series:
    """The hand-written robust z the audit used before scipy's median_abs_deviation replaced it."""
    v = values.astype(float)
    z = pd.Series(np.nan, index=v.index)
    med_all, mad_all = v.median(), (v - v.median()).abs().median()
    for _, idx in v.groupby(groups).groups.items():
        x = v.loc[idx]
        med, mad = (x.median(), (x - x.median()).abs().median()) if len(x) >= min_group else (med_all, mad_all)
        z.loc[idx] = (x - med) / (1.4826 * mad) if mad > 0 else 0.0
    return z


@pytest.mark.realdata
def test_robust_z_matches_the_hand_written_one_on_real_stain(real_manifest):
    from glomlib.data.images import read_rgb
    from glomlib.data.manifest import read_manifest

    df = read_manifest(real_manifest)
    stats = pd.DataFrame([audit.image_stats(read_rgb(p, 48)) for p in df["path"]], index=df.index)
    centres = df["center"].astype(str)
    centres.iloc[:5] = "tiny"  # a group below min_group falls back to all images
    for c in ("od_R", "od_G", "od_B", "blur_lapvar"):
        new, old = audit.robust_z(stats[c], centres), _robust_z_reference(stats[c], centres)
        assert np.isfinite(new).all() and np.abs(new).max() > 1
        np.testing.assert_allclose(new.to_numpy(), old.to_numpy(), rtol=0, atol=1e-9)
