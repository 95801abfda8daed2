"""Probability calibration stored in a model file's metadata (Platt or isotonic), applied to raw probabilities.

A calibrated model file (written by ``glomlib calibrate``) carries ``calibration`` in its metadata:

* ``{"method": "platt", "coef": a, "intercept": b}`` — ``p' = sigmoid(a * logit(p) + b)``;
* ``{"method": "isotonic", "x": [...], "y": [...]}`` — a monotone step function, linearly interpolated
  between its knots and held constant outside them (scikit-learn's ``IsotonicRegression`` with ``out_of_bounds="clip"``).

:func:`apply_calibration` is the only place that turns stored parameters into calibrated probabilities, so
``glomlib predict``, ``glomlib evaluate`` and the notebooks agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

CALIBRATION_METHODS = ("platt", "isotonic")
_EPS = 1e-6


def logit(prob: Any) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_calibration(prob: Any, calibration: Mapping[str, Any] | None) -> np.ndarray:
    """Calibrated probabilities for raw model probabilities ``prob`` (unchanged when ``calibration`` is None)."""
    p = np.asarray(prob, dtype=float)
    if not calibration:
        return p
    method = calibration.get("method")
    if method == "platt":
        z = float(calibration["coef"]) * logit(p) + float(calibration["intercept"])
        return 1.0 / (1.0 + np.exp(-z))
    if method == "isotonic":
        x = np.asarray(calibration["x"], dtype=float)
        y = np.asarray(calibration["y"], dtype=float)
        if x.size == 0 or x.size != y.size:
            raise ValueError("isotonic calibration needs knots x and y of equal, non-zero length.")
        return np.interp(p, x, y)
    raise ValueError(f"unknown calibration method {method!r}; expected one of {CALIBRATION_METHODS}.")


__all__ = ["CALIBRATION_METHODS", "apply_calibration", "logit"]
