"""Demo whole-slide images built from real glomerulus patches (tests, notebook 00, a first try without slides).

Each slide is a pyramidal tiled TIFF (tifffile: one top-level page per level, lossless zlib tiles, resolution in
CENTIMETER so that tiffslide and OpenSlide both report the MPP) with real patches pasted at known positions, and
the real masks traced (along pixel edges, holes kept) into QuPath GeoJSON in a different QuPath shape and
schema generation per slide. One slide has no resolution tags (no MPP).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

CELL, MARGIN, COLS, ROWS = 224, 128, 3, 2
BACKGROUND = 236
MPP = 0.5


def mask_polygon(mask: np.ndarray, dx: int, dy: int):
    """The mask's pixels as a (Multi)Polygon along pixel edges, shifted by (dx, dy): rasterising it with the
    pixel-centre rule gives the mask back exactly."""
    import shapely

    boxes = []
    for y in range(mask.shape[0]):
        row = np.concatenate([[0], mask[y].astype(np.int8), [0]])
        d = np.diff(row)
        for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
            boxes.append(shapely.box(dx + a, dy + y, dx + b, dy + y + 1))
    return shapely.union_all(boxes).buffer(0).simplify(0)  # pixel edges, collinear points dropped


def write_pyramid(path: Path, img: np.ndarray, mpp: float | None, levels: int = 3, tile: int = 256) -> None:
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        lv = img
        for i in range(levels):
            kw = {} if mpp is None else {"resolution": (1e4 / (mpp * 2**i),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(lv, tile=(tile, tile), compression="zlib", photometric="rgb", subfiletype=1 if i else 0, **kw)
            lv = np.ascontiguousarray(lv[::2, ::2])


def _feature(geom, label: str, style: str) -> dict:
    import shapely

    g = json.loads(shapely.to_geojson(geom))
    if style == "legacy":  # QuPath 0.2/0.3: id names the type, colorRGB int, measurements as a list
        return {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": g,
            "properties": {
                "classification": {"name": label, "colorRGB": -3670016},
                "isLocked": False,
                "measurements": [{"name": "Area px", "value": float(geom.area)}],
            },
        }
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(uuid.NAMESPACE_OID, geom.wkb.hex())),  # stable: a rerun resumes
        "geometry": g,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": label, "color": [200, 0, 0]},
            "measurements": {"Area px": float(geom.area)},
        },
    }


def _geojson(features: list[dict], style: str):
    if style == "legacy":
        return features  # a bare array of Features
    doc = {"type": "FeatureCollection", "features": features}
    if style == "points":  # a detection point QuPath would also export: counted and skipped
        doc["features"] = features + [
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": "Point", "coordinates": [10, 10]},
                "properties": {"objectType": "detection"},
            }
        ]
    return doc


def pick_patches(patches: pd.DataFrame, n_slides: int) -> list[list[tuple[str, str, str]]]:
    """Per demo slide 2 GS + 4 nonGS patches (image, mask, label), first by path; ``patches``: a manifest with
    ``path``, ``mask`` and ``label``."""
    rows = patches.sort_values("path")
    gs = rows[rows["label"] == "GS"].head(2 * n_slides)
    ngs = rows[rows["label"] == "nonGS"].head(4 * n_slides)
    if len(gs) < 2 * n_slides or len(ngs) < 4 * n_slides or (rows["mask"] == "").any():
        raise ValueError(f"demo slides need {2 * n_slides} GS and {4 * n_slides} nonGS patches with masks")
    out = []
    for i in range(n_slides):
        items = pd.concat([gs.iloc[2 * i : 2 * i + 2], ngs.iloc[4 * i : 4 * i + 4]])
        out.append(list(zip(items["path"], items["mask"], items["label"])))
    return out


def mirror_patches(mirror: Path) -> pd.DataFrame:
    """The glomeruli-pas mirror's patches as ``path, mask, label`` (no manifest needed)."""
    root = Path(mirror) / "Patches" / "Raw"
    rows = [
        {"path": str(p), "mask": str(root / "Masks" / p.name), "label": p.parent.name}
        for p in sorted((root / "Images").glob("*/*.png"))
    ]
    return pd.DataFrame(rows)


def build_slides(root: Path, patches: pd.DataFrame, n_slides: int = 5) -> dict:
    """Write ``root/slides.csv`` + slides + GeoJSON; return the CSV path, the canvases and the placed patches.
    The last slide has no resolution tags: the slides CSV gives its MPP."""
    from glomlib.data.images import read_mask, read_rgb

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    styles = ("v04", "legacy", "points")
    rows, canvases, placed = [], {}, []
    for i, chosen in enumerate(pick_patches(patches, n_slides)):
        name = f"synth{i}"
        canvas = np.full((2 * MARGIN + ROWS * CELL, 2 * MARGIN + COLS * CELL, 3), BACKGROUND, np.uint8)
        feats = []
        for k, (img_p, mask_p, label) in enumerate(chosen):
            x, y = MARGIN + (k % COLS) * CELL, MARGIN + (k // COLS) * CELL
            canvas[y : y + CELL, x : x + CELL] = read_rgb(img_p)
            mask = read_mask(mask_p)
            feats.append(_feature(mask_polygon(mask, x, y), label, "legacy" if styles[i % 3] == "legacy" else "v04"))
            placed.append({"slide": name, "image": str(img_p), "mask": str(mask_p), "label": label, "x": x, "y": y})
        no_mpp = i == n_slides - 1
        write_pyramid(root / f"{name}.tif", canvas, None if no_mpp else MPP)
        (root / f"{name}.geojson").write_text(json.dumps(_geojson(feats, styles[i % 3])))
        canvases[name] = canvas
        rows.append(
            {
                "slide": name,
                "wsi": f"{name}.tif",
                "annotations": f"{name}.geojson",
                "biopsy": f"B{i // 2}",
                "center": "C" + str(i % 2),
                "mpp": MPP if no_mpp else "",
            }
        )
    pd.DataFrame(rows).to_csv(root / "slides.csv", index=False)
    return {"csv": root / "slides.csv", "canvases": canvases, "placed": pd.DataFrame(placed)}


def placed_patch(placed: pd.DataFrame, slide: str, box: tuple[int, int, int, int]) -> pd.Series:
    """The placed patch whose cell holds the centre of ``box``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    p = placed[
        (placed["slide"] == slide)
        & (placed["x"] <= cx)
        & (cx < placed["x"] + CELL)
        & (placed["y"] <= cy)
        & (cy < placed["y"] + CELL)
    ]
    assert len(p) == 1, (slide, box)
    return p.iloc[0]
