"""QuPath GeoJSON outlines in, as shapely geometries with their id, class and measurements.

QuPath reads and writes four shapes (a FeatureCollection, a bare array of Features, one Feature, a bare
geometry) and two schema generations: 0.4+ writes ``classification: {name, color: [r, g, b]}``, a UUID
``id`` and ``measurements`` as a dict; 0.2/0.3 wrote ``colorRGB`` (a packed int), ``measurements`` as a list of
``{name, value}`` and ``id: "PathAnnotationObject"`` (a type, not an id). Polygons and MultiPolygons (with holes)
are outlines; other geometries are counted and skipped. Self-intersecting polygons are repaired with
``make_valid`` and counted, because QuPath 0.6 refuses invalid polygons on import.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glomlib.slides.read import SlideError

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
_LEGACY_TYPE_IDS = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "PathRootObject": "root",
}


class AnnotationError(SlideError):
    """An annotation file or outline cannot be used; the message names the slide, the file and the outline."""


@dataclass(frozen=True)
class Outline:
    id: str
    geometry: Any  # shapely Polygon or MultiPolygon, valid
    name: str  # QuPath class name ("" = unclassified)
    label: str  # the class name mapped through the classes file
    object_type: str = "annotation"
    measurements: dict[str, float] = field(default_factory=dict)


@dataclass
class Annotations:
    outlines: list[Outline]
    skipped: Counter = field(default_factory=Counter)  # geometry type -> count of non-polygon objects
    repaired: list[str] = field(default_factory=list)  # ids of self-intersecting outlines made valid

    def summary(self) -> str:
        parts = [f"{len(self.outlines)} outline(s)"]
        if self.repaired:
            parts.append(f"{len(self.repaired)} self-intersecting repaired with make_valid")
        if self.skipped:
            parts.append(
                "skipped non-polygon objects: " + ", ".join(f"{n} {t}" for t, n in sorted(self.skipped.items()))
            )
        return "; ".join(parts)


def features_of(obj: Any, where: str) -> list[dict]:
    """The Features of any of QuPath's four GeoJSON shapes."""
    if isinstance(obj, list):
        feats = obj
    elif isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        feats = obj.get("features")
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        feats = [obj]
    elif isinstance(obj, dict) and obj.get("type") in GEOMETRY_TYPES:
        feats = [{"type": "Feature", "geometry": obj, "properties": {}}]
    else:
        kind = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise AnnotationError(
            f"{where}: not QuPath GeoJSON (top level is {kind!r}); expected a FeatureCollection, "
            "an array of Features, a Feature or a geometry"
        )
    if not isinstance(feats, list) or not all(isinstance(f, dict) for f in feats):
        raise AnnotationError(f"{where}: 'features' must be an array of Feature objects")
    return feats


def classification_of(props: dict) -> tuple[str, tuple[int, int, int] | None]:
    """Class name and colour from either generation (``color`` list or packed ``colorRGB`` int)."""
    c = props.get("classification")
    if isinstance(c, str):
        return c, None
    if not isinstance(c, dict):
        return "", None
    name = str(c.get("name") or "")
    if isinstance(c.get("color"), list) and len(c["color"]) >= 3:
        return name, tuple(int(v) for v in c["color"][:3])
    if isinstance(c.get("colorRGB"), int):
        v = c["colorRGB"] & 0xFFFFFF
        return name, ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    return name, None


def measurements_of(props: dict) -> dict[str, float]:
    """Numeric measurements from a dict (QuPath 0.4+) or a list of ``{name, value}`` (older)."""
    m = props.get("measurements") or {}
    items = m.items() if isinstance(m, dict) else ((d.get("name"), d.get("value")) for d in m if isinstance(d, dict))
    out = {}
    for k, v in items:
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry (make_valid can return a collection with lines or points)."""
    import shapely

    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def _geometry(feat: dict, where: str) -> tuple[Any, bool]:
    """``(valid polygonal geometry, repaired)``; None for a non-polygon object."""
    import shapely
    from shapely.geometry import shape

    g = feat.get("geometry")
    if not isinstance(g, dict) or g.get("type") not in GEOMETRY_TYPES:
        raise AnnotationError(f"{where}: no GeoJSON geometry (got {g!r:.80})")
    try:
        geom = shape(g)
    except Exception as e:
        raise AnnotationError(f"{where}: invalid {g.get('type')} coordinates ({e})") from None
    if geom.geom_type == "GeometryCollection":
        geom = _polygonal(geom)
    elif geom.geom_type not in ("Polygon", "MultiPolygon"):
        return None, False
    if geom.is_empty or (geom.is_valid and geom.area == 0):
        raise AnnotationError(f"{where}: empty geometry (no area); remove it or redraw it in QuPath")
    if geom.is_valid:
        return geom, False
    fixed = _polygonal(shapely.make_valid(geom))
    if fixed.is_empty or fixed.area == 0:
        raise AnnotationError(f"{where}: invalid polygon with nothing left after make_valid; redraw it")
    return fixed, True


def _feature_id(feat: dict, props: dict, geom: Any) -> tuple[str, str]:
    """``(id, object type)``: a legacy ``id`` naming the type is no id; without one, a hash of the geometry."""
    fid = feat.get("id", props.get("id"))
    otype = str(props.get("objectType") or "")
    if isinstance(fid, str) and fid in _LEGACY_TYPE_IDS:
        otype, fid = otype or _LEGACY_TYPE_IDS[fid], None
    if fid in (None, ""):
        fid = "g" + hashlib.sha1(geom.wkb).hexdigest()[:12]
    return str(fid), otype or "annotation"


def _read_json(path: Path, slide: str) -> Any:
    where = f"slide {slide}: annotations {path}"
    if not path.is_file():
        raise AnnotationError(f"{where} do not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{where} are not valid JSON ({e})") from None


def load_annotations(path: str | os.PathLike, slide: str = "", classes: dict[str, str] | None = None) -> Annotations:
    """Read QuPath GeoJSON ``path``; ``classes`` maps class names to labels (a name missing from it is an error)."""
    path = Path(path)
    feats = features_of(_read_json(path, slide), f"slide {slide}: annotations {path}")
    res, seen = Annotations([]), {}
    for i, feat in enumerate(feats):
        where = f"slide {slide}: annotation {feat.get('id', f'#{i}')!s} (feature {i} of {path.name})"
        props = feat.get("properties") or {}
        geom, repaired = _geometry(feat, where)
        if geom is None:
            res.skipped[feat["geometry"]["type"]] += 1
            continue
        fid, otype = _feature_id(feat, props, geom)
        if fid in seen:
            raise AnnotationError(
                f"slide {slide}: annotation id {fid} appears twice in {path.name} (features "
                f"{seen[fid]} and {i}); ids must be unique (QuPath: Objects > Refresh object IDs)"
            )
        seen[fid] = i
        name, _ = classification_of(props)
        label = name
        if classes is not None and name:
            if name not in classes:
                raise AnnotationError(f"{where}: class {name!r} is not in the classes file ({sorted(classes)})")
            label = classes[name]
        if repaired:
            res.repaired.append(fid)
        res.outlines.append(Outline(fid, geom, name, label, otype, measurements_of(props)))
    return res


def read_classes(path: str | os.PathLike | None) -> dict[str, str] | None:
    """A classes file: JSON ``{"QuPath class": "label"}`` or a CSV with columns ``name,label``."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"classes file {p} does not exist")
    if p.suffix.lower() == ".json":
        m = json.loads(p.read_text())
        if not isinstance(m, dict):
            raise AnnotationError(f'classes file {p} must hold a JSON object {{"class name": "label"}}')
        return {str(k): str(v) for k, v in m.items()}
    import pandas as pd

    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    if not {"name", "label"} <= set(df.columns):
        raise AnnotationError(f"classes file {p} needs columns name,label (has {list(df.columns)})")
    return dict(zip(df["name"], df["label"]))


def rasterize(geom: Any, box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:  # noqa: F821
    """Boolean mask ``shape`` (h, w) of ``geom`` over level-0 ``box`` (x0, y0, x1, y1): a pixel is inside when its
    centre is (holes stay holes)."""
    import numpy as np
    import shapely

    h, w = shape
    x0, y0, x1, y1 = box
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    shapely.prepare(geom)
    xx, yy = np.meshgrid(xs, ys)
    return shapely.intersects_xy(geom, xx, yy)
