"""Grad-CAM heat maps of the errors and the share of attribution inside the glomerulus mask."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd

from glomlib.review import display
from glomlib.review.explain.galleries import load_display_images, load_display_masks
from glomlib.review.explain.inputs import ranked_errors
from glomlib.review.explain.models import ExplainModels, _normalise, _plan


def target_layer(model, backbone: str | None = None):
    """Grad-CAM layer: ResNet ``layer4``; EfficientNet the last block of ``blocks``; else the last Conv2d."""
    import torch.nn as nn

    named = dict(model.named_modules())
    name = (backbone or "").lower()
    if name.startswith("resnet") or any(k.endswith("layer4") for k in named):
        for k, m in named.items():
            if k.endswith("layer4"):
                return m
    for k, m in named.items():
        if k.endswith("blocks") and isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m):
            return m[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("No convolutional layer found for Grad-CAM.")
    return convs[-1]


def _stages(model) -> list[tuple[str, object]]:
    """Grad-CAM candidates, shallow to deep: ResNet ``layer1..4``; EfficientNet each of ``blocks``; else every Conv2d."""
    import torch.nn as nn

    named = list(model.named_modules())
    res = [(k, m) for k, m in named if re.search(r"(^|\.)layer[1-4]$", k)]
    blocks = [(k, m) for k, m in named if k.endswith("blocks") and isinstance(m, (nn.Sequential, nn.ModuleList))]
    if res or blocks:
        return res or [(f"{blocks[-1][0]}.{i}", b) for i, b in enumerate(blocks[-1][1])]
    return [(k, m) for k, m in named if isinstance(m, nn.Conv2d)]


def cam_layer(model, image_size: int, min_side: int = 7) -> dict[str, Any]:
    """The deepest candidate layer whose Grad-CAM map is at least ``min_side`` x ``min_side`` for ``image_size`` px
    inputs (measured by a forward pass), for a map that can say *where* in the patch the evidence lies.
    ``{"layer": module or None (no candidate is fine enough), "name", "side", "stage" (1-based, of "stages"),
    "last_name", "last_side"}``, where ``last_*`` is the default layer (:func:`target_layer`)'s map."""
    import torch

    stages, sides = _stages(model), {}

    def record(key):  # a forward hook must return None (a value would replace the layer's output)
        return lambda m, i, o: sides.setdefault(key, int(min(o.shape[-2:]))) and None

    default = target_layer(model)
    hooks = [m.register_forward_hook(record(k)) for k, m in [*stages, ("", default)]]
    p = next(iter(model.parameters()))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    last = next((k for k, m in stages if m is default), "last layer")
    fine = [i for i, (k, _) in enumerate(stages) if int(sides[k]) >= min_side]
    k, m = stages[fine[-1]] if fine else (None, None)
    side = int(sides[k]) if k else max(int(v) for v in sides.values())
    out = {"layer": m, "name": k, "side": side, "stage": fine[-1] + 1 if fine else None, "stages": len(stages)}
    return {**out, "last_name": last, "last_side": int(sides[""])}


class LogitTarget:
    """Grad-CAM target for a model with one logit (positive class) or two: explains ``cls`` (1 pos, 0 neg)."""

    def __init__(self, cls: int):
        self.cls = int(cls)

    def __call__(self, out):
        if out.ndim == 0 or out.shape[-1] == 1:
            v = out.reshape(())
            return v if self.cls == 1 else -v
        return out[..., self.cls]


def gradcam(
    model, meta: dict[str, Any], images: np.ndarray, classes: Sequence[int], layer=None, batch_size: int = 8
) -> np.ndarray:
    """Grad-CAM maps (N,H,W) in [0,1] at the image size, each explaining the given class (1 = positive)."""
    import torch
    from pytorch_grad_cam import GradCAM

    layer = layer if layer is not None else target_layer(model, meta.get("backbone"))
    model.eval()
    p = _plan(model, "fp32")
    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(0, len(images), batch_size):
            x = _normalise(np.asarray(images[i : i + batch_size]), meta, p).requires_grad_(True)
            with torch.enable_grad():
                out.append(cam(input_tensor=x, targets=[LogitTarget(c) for c in classes[i : i + batch_size]]))
    return np.concatenate(out) if out else np.zeros((0,) + tuple(np.asarray(images).shape[1:3]), np.float32)


def mask_share(cam: np.ndarray, mask: np.ndarray | None) -> float:
    """Share of the (non-negative) attribution inside the mask, in [0, 1]; NaN without a mask or attribution."""
    if mask is None:
        return float("nan")
    cam = np.clip(np.asarray(cam, float), 0, None)
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != cam.shape:
        m = cv2.resize(m.astype(np.uint8), cam.shape[::-1], interpolation=cv2.INTER_NEAREST)
    total = cam.sum()
    if total <= 0 or not np.any(m):
        return float("nan")
    return float(cam[m > 0].sum() / total)


def gradcam_errors(
    models: ExplainModels, pred: pd.DataFrame, n_per_kind: int = 8, batch_size: int = 8, layer: str | None = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list]:
    """Grad-CAM for the most confident FP and FN, each computed with its own model from ``models`` (the fold model
    that did not see it) at the layer named ``layer`` (e.g. :func:`cam_layer`'s ``name``; None: :func:`target_layer`).
    Returns ``(rows with columns mask_share, mask_area, mask_enrichment and model, images, cams, masks)``.

    The maps always explain the *positive* class: with a one-logit classifier the "negative" map is the exact
    negative of the positive one (all zero after Grad-CAM's ReLU wherever the positive map is positive), so
    "where did the model see positive evidence" is the informative question for both error kinds: for a false
    positive it shows what misled the model, for a false negative where the (too weak) evidence was."""
    size = int(models.meta["image_size"])
    rows = pd.concat([ranked_errors(pred, "FP", n_per_kind), ranked_errors(pred, "FN", n_per_kind)])
    if not len(rows):
        return (
            rows.assign(mask_share=[], model=[]),
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros((0, size, size)),
            [],
        )
    imgs = load_display_images(rows["path"].tolist(), size)
    positions = [pred.index.get_loc(i) for i in rows.index]
    cams = np.zeros(imgs.shape[:3], np.float32)
    for path, members in models.groups(positions).items():
        model, meta = models.load(path)
        sel = [positions.index(m) for m in members]
        at = dict(model.named_modules())[layer] if layer else None
        cams[sel] = gradcam(model, meta, imgs[sel], [1] * len(sel), layer=at, batch_size=batch_size)
    rows = rows.assign(model=[str(models.files[i]) for i in positions])
    masks = load_display_masks(rows["mask"].tolist() if "mask" in rows else [""] * len(rows), size)
    area = [float(np.mean(m)) if m is not None and np.any(m) else float("nan") for m in masks]
    rows = rows.assign(mask_share=[mask_share(c, m) for c, m in zip(cams, masks)], mask_area=area)
    # > 1: heat concentrated on the glomerulus more than a uniform map would be (share == area)
    rows["mask_enrichment"] = rows["mask_share"] / rows["mask_area"]
    return rows, imgs, cams, masks


def cam_tile(path: str, cam: np.ndarray | None = None, mask: str = "", alpha: float = 0.55) -> np.ndarray:
    """The patch at its native size with ``cam`` (resized to it) blended in ("inferno", more opaque where the map is
    strong, so weak evidence leaves the tissue visible) and the glomerulus mask's outline in white."""
    import matplotlib

    img = display.tile(path, None)
    h, w = img.shape[:2]
    if cam is not None:
        c = np.clip(cv2.resize(np.asarray(cam, np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)[..., None]
        heat = matplotlib.colormaps["inferno"](c[..., 0])[..., :3] * 255
        img = np.clip((1 - alpha * c) * img + alpha * c * heat, 0, 255).astype(np.uint8)
    m = display.mask_or_none(mask, None) if mask else None
    if m is not None and m.shape == (h, w):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        img = cv2.drawContours(np.ascontiguousarray(img), contours, -1, (255, 255, 255), max(1, h // 112))
    return img
