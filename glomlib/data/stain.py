"""Stain normalisation of uint8 RGB patches: Reinhard (OpenCV LAB) or Macenko (torchstain's numpy backend).

Reinhard et al. (2001) map each image's LAB mean and standard deviation to a target's; Macenko et al. (2009)
estimate each image's two stain vectors in optical-density space and re-compose it with the target's stains. An
image with too little stained tissue for Macenko (:data:`MACENKO_MIN_TISSUE`) is left unchanged and reported
(:class:`StainReport`), never dropped. Both are stateless given their target, so training and a saved model's
predictions apply the same call. The targets are fixed in code (like ImageNet's mean/std, so no test image shapes
them): medians over the glomeruli-pas patches of SAS and VUHSK at 64 px, a generic PAS look.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

STAIN_METHODS = ("", "reinhard", "macenko")
#: (mean L, a, b), (std L, a, b) in OpenCV's 8-bit LAB
REINHARD_TARGET: dict[str, tuple[float, float, float]] = {"mean": (167.7, 150.5, 111.7), "std": (37.0, 10.7, 7.2)}
#: stain matrix (rows R, G, B optical density; columns the two stains, unit length) and the stains' 99th
#: percentile concentrations; median over 488 SAS + VUHSK patches at 64 px (torchstain fit, Io 240, beta 0.15)
MACENKO_TARGET: dict[str, Any] = {
    "stains": ((0.6069, 0.2601), (0.7006, 0.8964), (0.3753, 0.3589)),
    "max_conc": (1.4853, 1.1101),
}
#: smallest share of an image's pixels that must be stained tissue (OD above beta in every channel) for Macenko
MACENKO_MIN_TISSUE = 0.05
_IO, _BETA, _ALPHA = 240, 0.15, 1


@dataclasses.dataclass
class StainReport:
    """What a normalisation call did: ``unchanged`` = indices (into the batch given) of images it left as they
    were because their stain could not be estimated (Macenko only), with the reason for each."""

    method: str = ""
    n_images: int = 0
    unchanged: list[int] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: StainReport, offset: int = 0) -> None:
        self.method = self.method or other.method
        self.n_images += other.n_images
        self.unchanged += [i + offset for i in other.unchanged]
        self.reasons += other.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_images": self.n_images,
            "n_unchanged": len(self.unchanged),
            "unchanged": self.unchanged[:1000],
            "reasons": self.reasons[:1000],
        }


def _check(images: Any) -> tuple[np.ndarray, bool]:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.shape[-1:] != (3,) or arr.ndim not in (3, 4):
        raise ValueError(f"stain normalisation expects uint8 RGB images (N, H, W, 3); got {arr.dtype} {arr.shape}")
    single = arr.ndim == 3
    return (arr[None] if single else arr), single


def reinhard(images: Any, target: dict[str, Sequence[float]] | None = None) -> np.ndarray:
    """Reinhard-normalised copy of uint8 RGB ``images`` ``(N, H, W, 3)`` or ``(H, W, 3)``."""
    import cv2

    t = target or REINHARD_TARGET
    tm, ts = np.asarray(t["mean"], dtype=np.float32), np.asarray(t["std"], dtype=np.float32)
    batch, single = _check(images)
    out = np.empty_like(batch)
    for i, im in enumerate(batch):
        lab = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2LAB).astype(np.float32)
        m = lab.reshape(-1, 3).mean(0)
        s = lab.reshape(-1, 3).std(0)
        lab = (lab - m) / np.maximum(s, 1e-3) * ts + tm
        out[i] = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out[0] if single else out


def _macenko_normalizer(target: dict[str, Any] | None):
    try:
        import torchstain
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "stain_normalize='macenko' needs torchstain (pip install torchstain; it is in glomlib's dependencies: `make setup`)."
        ) from e
    t = target or MACENKO_TARGET
    n = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    n.HERef = np.asarray(t["stains"], dtype=float)
    n.maxCRef = np.asarray(t["max_conc"], dtype=float)
    return n


def macenko(images: Any, target: dict[str, Any] | None = None, report: StainReport | None = None) -> np.ndarray:
    """Macenko-normalised copy of uint8 RGB ``images`` ``(N, H, W, 3)`` or ``(H, W, 3)`` (torchstain's numpy
    implementation, mapped to ``target``, default :data:`MACENKO_TARGET`). Images whose stain cannot be
    estimated are returned unchanged and listed in ``report``."""
    batch, single = _check(images)
    norm = _macenko_normalizer(target)
    rep = StainReport("macenko", len(batch))
    out = np.array(batch, copy=True)
    for i, im in enumerate(batch):
        flat = im.reshape(-1, 3).astype(np.float64)
        tissue = float((~np.any(-np.log((flat + 1) / _IO) < _BETA, axis=1)).mean())
        if tissue < MACENKO_MIN_TISSUE:
            rep.unchanged.append(i)
            rep.reasons.append(f"{tissue:.1%} stained pixels (< {MACENKO_MIN_TISSUE:.0%})")
            continue
        try:
            # NaN from a degenerate covariance is an error here, not a warning. np.errstate is thread-safe (images are
            # normalised in worker threads); warnings.catch_warnings is not and could leave "error" set process-wide.
            with np.errstate(divide="raise", invalid="raise", over="raise"):
                res, _, _ = norm.normalize(I=np.ascontiguousarray(im), Io=_IO, alpha=_ALPHA, beta=_BETA, stains=False)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError, RuntimeWarning) as e:
            rep.unchanged.append(i)
            rep.reasons.append(f"stain estimate failed: {e}")
            continue
        out[i] = res
    if report is not None:
        report.add(rep)
    return out[0] if single else out


def normalize_stain(images: Any, method: str, report: StainReport | None = None) -> np.ndarray:
    """``images`` unchanged for ``method=""``; else a Reinhard- or Macenko-normalised copy. ``report`` (a
    :class:`StainReport`) collects the images a method had to leave unchanged."""
    if not method:
        return np.asarray(images)
    if method == "reinhard":
        out = reinhard(images)
        if report is not None:
            report.add(StainReport("reinhard", len(out) if np.asarray(images).ndim == 4 else 1))
        return out
    if method == "macenko":
        return macenko(images, report=report)
    raise ValueError(f"stain_normalize={method!r}: choose one of {list(STAIN_METHODS)} ('' = off).")


def write_stain_report(folder: Any, report: StainReport, df: Any = None) -> None:
    """``<folder>/stain.json``: the method, how many images it normalised and which it left unchanged (with the
    file and the reason); a warning names the count when any were left unchanged."""
    import sys
    from pathlib import Path

    from glomlib.core.io import write_json_atomic

    doc = report.to_dict()
    if df is not None and report.unchanged:
        paths = list(df["path"])
        doc["unchanged_files"] = [Path(str(paths[i])).name for i in report.unchanged[:1000]]
    write_json_atomic(Path(folder) / "stain.json", doc)
    if report.unchanged:
        print(
            f"stain_normalize={report.method}: {len(report.unchanged)} of {report.n_images} image(s) left unchanged (too little stained tissue to estimate the stains); listed in {Path(folder) / 'stain.json'}",
            file=sys.stderr,
        )
