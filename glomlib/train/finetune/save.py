"""Saving fine-tuned classifiers: metadata, non-finite taps, fold models in float16 when that is exact enough."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from glomlib.core import runs, runtime
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from glomlib.models.bundle import BUNDLE_FILE, pack_files
from glomlib.models.files import load_model, read_model_meta, save_model
from glomlib.models.inference import predict_probs
from glomlib.train.finetune.config import FinetuneConfig

#: largest |probability difference| tolerated between a fold model read back from its float16 file and the
#: in-run out-of-fold predictions; above it the file is rewritten in float32.
FOLD_MODEL_TOLERANCE = 1e-3


def model_meta(cfg: FinetuneConfig, labels: tuple[str, str], fingerprint: str, **extra: Any) -> dict[str, Any]:
    """Metadata of a saved classifier; ``labels``: (positive, negative); ``extra``: epochs, n_train, fold..."""
    meta = {"backbone": cfg.backbone, "image_size": int(cfg.image_size), "mean": list(IMAGENET_MEAN)}
    meta.update(std=list(IMAGENET_STD), positive_label=labels[0], negative_label=labels[1], init=cfg.init)
    return {**meta, "data_fingerprint": fingerprint, "threshold": 0.5, "stain_normalize": cfg.stain_method, **extra}


def zero_nonfinite_weights(model) -> list[str]:
    """Set non-finite weight entries to 0 in place and return the names of the tensors that held them.

    Why: at tiny image sizes a 3x3 kernel on a 1x1 feature map has taps that only ever see zero padding; the CPU's
    bf16 kernels skip the padding and can leave those taps' gradients undefined, so AdamW writes NaN into weights
    that never touch an image (the predictions stay finite). Zero is what they multiply anyway. Real divergence
    gives non-finite predictions, which :func:`save_fold_model` refuses."""
    names = []
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                t.copy_(torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0))
                names.append(name)
    return names


def save_final_model(model, meta: dict[str, Any], path: Path) -> None:
    zeroed = zero_nonfinite_weights(model)
    save_model(model, {**meta, "zeroed_nonfinite": zeroed} if zeroed else meta, path)


def save_fold_model(
    model, meta: dict[str, Any], path: Path, test_images, probs: np.ndarray, plan: runtime.Plan
) -> dict[str, Any]:
    """Save a fold model as float16 safetensors, read it back and predict its test images again; if any
    probability moves by more than :data:`FOLD_MODEL_TOLERANCE` it is saved in float32 instead.
    Returns ``{"file", "dtype", "max_abs_diff", ...}`` for result.json."""
    if not np.all(np.isfinite(probs)):
        raise FloatingPointError(
            f"{path.parent.name}: the model predicts NaN/inf probabilities (training diverged); "
            "lower lr or use precision=fp32, then fine-tune again."
        )
    zeroed = zero_nonfinite_weights(model)
    if zeroed:
        meta = {**meta, "zeroed_nonfinite": zeroed}
    tried: dict[str, float] = {}
    for dtype in (torch.float16, torch.float32):
        save_model(model, meta, path, dtype=dtype)
        loaded, _ = load_model(path, device=str(plan.device))
        if plan.channels_last:
            loaded = loaded.to(memory_format=torch.channels_last)
        diff = float(np.max(np.abs(predict_probs(loaded, test_images, plan=plan) - probs))) if len(probs) else 0.0
        tried[str(dtype).replace("torch.", "")] = diff
        if diff <= FOLD_MODEL_TOLERANCE:
            break
    res = {"file": path.name, "dtype": str(dtype).replace("torch.", ""), "max_abs_diff": diff}
    return {**res, "max_abs_diff_tried": tried, "zeroed_nonfinite": zeroed}


def save_run_bundle(out: Path, finals: list[Path], label_fraction: float, members: str = "folds+finals") -> Path:
    """``bundle.safetensors``: the final models (``members="finals"``), or also the fold models of every seed at
    ``label_fraction`` (``"folds+finals"``), packed as one (glomlib.models.bundle); threshold and stain option are
    the first final model's. Kept when it holds exactly these files (a resume); a bundle of other members (a resume
    with other ``final_seeds``) is kept aside as ``bundle.previous-N.safetensors`` and written anew."""
    path = out / BUNDLE_FILE
    folds = [] if members == "finals" else [
        f for f in runs.fold_model_files(out) if float(read_model_meta(f).get("label_fraction", 1)) == float(label_fraction)
    ]  # fmt: skip
    files = [*folds, *finals[1:], finals[0]]  # the first final model last: the metadata's source
    if path.exists():
        if [m.get("source") for m in read_model_meta(path).get("members", [])] == [str(f) for f in files]:
            return path
        n = 1 + sum(1 for _ in out.glob("bundle.previous-*.safetensors"))
        path.rename(out / f"bundle.previous-{n}.safetensors")
    who = "fold members and final models" if folds else f"{len(finals)} final model(s), seeds apart"
    rule = f"youden (pooled out-of-fold predictions; the first final model's threshold; members: {who})"
    return pack_files(files, path, meta_from=finals[0], threshold_rule=rule)
