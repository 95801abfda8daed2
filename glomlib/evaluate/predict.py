"""Apply a fine-tuned ``model.safetensors`` to new patches.

The file holds weights plus the metadata that says how to use them (no pickle); applied to
new patches: :func:`predict` per image, ``glomlib predict`` per manifest (never overwriting ``--out``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core import runtime
from glomlib.core.config import Device, PositiveInt, StepConfig
from glomlib.core.io import write_csv_new
from glomlib.data.cache import load_images
from glomlib.data.stain import normalize_stain
from glomlib.evaluate.qc import qc_column, qc_line, sizes_checked
from glomlib.models.bundle import DEFAULT_COMBINE, TTA
from glomlib.models.calibration import apply_calibration
from glomlib.models.files import ModelFileError, load_model, save_model
from glomlib.models.inference import predict_probs


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def model_input(images, meta: dict[str, Any]) -> np.ndarray:
    """The images as the model sees them: uint8 RGB ``(N, H, W, 3)`` at ``meta['image_size']``, stain-normalised
    when the model was trained on normalised images. ``images``: an array or a list of file paths."""
    size = int(meta["image_size"])
    if isinstance(images, (list, tuple)) and (not images or isinstance(images[0], (str, Path))):
        images = np.asarray(load_images([str(p) for p in images], size))
    images = np.array(images)  # a writable copy (the cache hands out read-only memmaps)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"predict expects uint8 RGB images (N, H, W, 3); got {images.dtype} {images.shape}.")
    images = _resize(images, size)
    if meta.get("stain_normalize"):  # the model was trained on stain-normalised images
        images = normalize_stain(images, meta["stain_normalize"])
    return images


def predict(
    model,
    meta: dict[str, Any],
    images,
    batch_size: int = 64,
    device: str | None = None,
    precision: str = "auto",
    calibrated: bool = True,
    tta: bool = False,
    prepared: bool = False,
) -> np.ndarray:
    """Probability of ``meta['positive_label']`` for each image.

    When the model file carries a ``calibration`` (written by ``glomlib calibrate``) it is applied unless
    ``calibrated=False`` (then the network's raw probabilities come back).

    ``images``: uint8 RGB ``(N, H, W, 3)`` (resized to ``meta['image_size']`` when needed) or a list of file
    paths (decoded through :func:`glomlib.data.cache.load_images`). ``tta``: average over the 8 flips/90-degree
    rotations of each image (:class:`glomlib.models.bundle.TTA`; 8x the compute). ``prepared``: ``images`` are
    already :func:`model_input`'s output (resized and stain-normalised once for several calls).
    """
    images = images if prepared else model_input(images, meta)
    dev = next(model.parameters()).device if device is None else runtime.resolve_device(device)
    model.to(dev)
    net = TTA(model, meta.get("combine", DEFAULT_COMBINE)) if tta else model
    raw = predict_probs(
        net, images, mean=meta["mean"], std=meta["std"], plan=runtime.plan(str(dev), precision), batch_size=batch_size
    ).astype(float)
    return apply_calibration(raw, meta.get("calibration")) if calibrated else raw


def member_probs(bundle, meta: dict[str, Any], images, tta: bool = False, **kw: Any) -> np.ndarray:
    """A bundle's members' raw probabilities ``(N, M)`` (combine them with ``combine_probs(P, meta['combine'])``);
    the images are resized and stain-normalised once for all members."""
    x = images if kw.pop("prepared", False) else model_input(images, meta)
    return np.stack([predict(m, meta, x, calibrated=False, tta=tta, prepared=True, **kw) for m in bundle.members], 1)


def member_spread(y: Any, probs: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """The members' AUCs (each on its own) next to the bundle's: min, median, max; names and how combined."""
    from glomlib.evaluate.metrics import auc

    aucs = [float(auc(y, probs[:, i])) for i in range(probs.shape[1])]
    names = [str(m.get("name", i)) for i, m in enumerate(meta.get("members") or [])]
    spread = {"min": float(np.min(aucs)), "median": float(np.median(aucs)), "max": float(np.max(aucs))}
    return {"combine": meta.get("combine"), "members": names, "member_auc": aucs, "member_auc_spread": spread}


def predict_manifest(
    model_path: str | Path,
    manifest: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 64,
    tta: bool = False,
):
    """Predict every image of ``manifest`` and write ``out`` (CSV) with a ``qc`` column (see
    :mod:`glomlib.evaluate.qc`). Refuses to overwrite ``out``: the file is published create-exclusively, so of
    two runs writing the same ``out`` at once exactly one succeeds."""
    from glomlib.evaluate.external.lookup import read_for_model, resolve_model

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new file (predictions are never overwritten).")
    if out.parent.exists() and not os.access(out.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: the folder {out.parent} is not writable; choose another --out.")
    model_path = resolve_model(model_path)
    model, meta = load_model(model_path, device=device)
    df = read_for_model(manifest, meta, require_labels=False)
    sizes = sizes_checked(list(df["path"]))
    images = load_images(list(df["path"]), int(meta["image_size"]), hashes=list(df["sha256"]))
    seen = model_input(images, meta)  # resized and stain-normalised once, for the model and the quality check
    probs = predict(model, meta, seen, batch_size=batch_size, tta=tta, prepared=True)
    thr = float(meta.get("threshold", 0.5))
    res = pd.DataFrame({"path": df["path"], "prob": probs})
    res["pred_label"] = np.where(probs >= thr, meta["positive_label"], meta.get("negative_label", "negative"))
    if "slide" in df.columns:
        res.insert(1, "slide", df["slide"])
    if (df["label"] != "").any():
        res["label"] = df["label"]
    res["qc"] = qc_column(sizes, images, meta, seen=seen)
    write_csv_new(res, out)
    return res


@dataclasses.dataclass(frozen=True)
class PredictConfig(StepConfig):
    """Parameters of ``glomlib predict``: the probability of the positive label for every image of a manifest
    (columns path and slide required, label optional: empty, or the model's class names, one class alone is fine),
    with a per-image qc column."""

    model: str  # model.safetensors or bundle.safetensors of a fine-tune run (or its run folder)
    manifest: str  # manifest CSV of the images to predict: columns path and slide (required), label (optional)
    out: str  # output CSV (must not exist)
    device: Device = "auto"  # auto | cpu | cuda
    batch_size: PositiveInt = 64  # images per forward pass
    tta: bool = False  # test-time augmentation: mean over the 8 flips/90-degree rotations (8x the compute)


def cli_run(cfg: PredictConfig) -> int:
    """``glomlib predict``: failures become one message and an exit code in glomlib.cli.main."""
    kw = {"device": cfg.device, "batch_size": cfg.batch_size, "tta": cfg.tta}
    res = predict_manifest(cfg.model, cfg.manifest, cfg.out, **kw)
    print(f"wrote {len(res)} predictions to {cfg.out}; {qc_line(res['qc'])}")
    return 0


__all__ = ["PredictConfig", "cli_run", "predict", "predict_manifest", "load_model", "save_model", "ModelFileError"]
