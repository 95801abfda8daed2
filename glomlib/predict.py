"""Apply a fine-tuned model to new glomerulus patches.

A fine-tune run saves ``model.safetensors``: the classifier's weights plus metadata that describe how to use
them (``backbone``, ``image_size``, normalisation ``mean``/``std``, ``positive_label``, ``negative_label``,
``init``, ``threshold``...). Loading needs no pickle: safetensors holds only tensors and strings.

* :func:`load_model` -> ``(model, meta)``; :func:`predict` -> probability of the positive label per image.
* ``glomlib predict --model MODEL --manifest CSV --out CSV`` writes ``path, prob, pred_label`` (+ ``label``
  when the manifest has labels); the manifest may be unlabeled. It never overwrites an existing ``--out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MODEL_FORMAT = "glomlib.finetune.model/1"
_REQUIRED = ("backbone", "image_size", "mean", "std", "positive_label")


class ModelFileError(ValueError):
    """A model file is missing, unreadable or incomplete; the message says what to do."""


def save_model(model, meta: dict[str, Any], path: str | Path) -> Path:
    """Save a fine-tuned classifier (``glomlib.finetune`` model) with its metadata as safetensors, atomically."""
    from glomlib.checkpoint import save_safetensors_atomic

    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"save_model: meta lacks {missing}.")
    return save_safetensors_atomic(model, {"format": MODEL_FORMAT, **meta}, path)


def read_model_meta(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist. A fine-tune run (notebook 03 or `glomlib "
                             "finetune`) writes <run>/model.safetensors; pass that path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:
        raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from e
    from glomlib.checkpoint import meta_from_strings

    meta = meta_from_strings(raw)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a glomlib fine-tuned model (format={meta.get('format')!r}; expected "
                             f"{MODEL_FORMAT!r}). An SSL encoder.safetensors is not a classifier: fine-tune it first.")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {missing}; the file is incomplete.")
    return meta


def load_model(path: str | Path, device: str = "cpu"):
    """Load ``model.safetensors`` -> ``(model in eval mode, meta dict)``."""
    from safetensors.torch import load_file

    from glomlib.finetune import build_classifier, resolve_device

    meta = read_model_meta(path)
    model = build_classifier(meta["backbone"])
    sd = load_file(str(path))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit a {meta['backbone']} classifier: {e}") from e
    model.to(resolve_device(device)).eval()
    return model, meta


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def predict(model, meta: dict[str, Any], images, batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """Probability of ``meta['positive_label']`` for each image.

    ``images``: uint8 RGB ``(N, H, W, 3)`` (resized to ``meta['image_size']`` when needed) or a list of file
    paths (decoded through :func:`glomlib.cache.load_images`).
    """
    import torch

    size = int(meta["image_size"])
    if isinstance(images, (list, tuple)) and (not images or isinstance(images[0], (str, Path))):
        from glomlib.cache import load_images

        images = np.asarray(load_images([str(p) for p in images], size))
    images = np.array(images)  # a writable copy (the cache hands out read-only memmaps)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"predict expects uint8 RGB images (N, H, W, 3); got {images.dtype} {images.shape}.")
    images = _resize(images, size)
    from glomlib.finetune import predict_tensor

    dev = next(model.parameters()).device if device is None else torch.device(device)
    model.to(dev)
    cl = dev.type != "mps"
    if cl:
        model.to(memory_format=torch.channels_last)
    return predict_tensor(model, images, mean=meta["mean"], std=meta["std"], device=dev, batch_size=batch_size,
                          channels_last=cl).astype(float)


def predict_manifest(model_path: str | Path, manifest: str | Path, out: str | Path, device: str = "auto",
                     batch_size: int = 64):
    """Predict every image of ``manifest`` and write ``out`` (CSV). Refuses to overwrite ``out``."""
    import pandas as pd

    from glomlib.manifest import read_manifest

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new file (predictions are never overwritten).")
    model, meta = load_model(model_path, device=device)
    df = read_manifest(manifest, positive_label=meta["positive_label"], require_labels=False)
    probs = predict(model, meta, list(df["path"]), batch_size=batch_size)
    thr = float(meta.get("threshold", 0.5))
    res = pd.DataFrame({"path": df["path"], "prob": probs})
    res["pred_label"] = np.where(probs >= thr, meta["positive_label"], meta.get("negative_label", "negative"))
    if "slide" in df.columns:
        res.insert(1, "slide", df["slide"])
    if (df["label"] != "").any():
        res["label"] = df["label"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    res.to_csv(tmp, index=False)
    tmp.replace(out)
    return res


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="apply a fine-tuned model.safetensors to a manifest",
                              description="Write the probability of the positive label for every image of a "
                                          "manifest (labels optional).")
    p.add_argument("--model", required=True, help="model.safetensors from a fine-tune run")
    p.add_argument("--manifest", required=True, help="manifest CSV (column path; label optional)")
    p.add_argument("--out", required=True, help="output CSV (must not exist)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=int, default=64)

    def _run(args) -> int:
        try:
            res = predict_manifest(args.model, args.manifest, args.out, device=args.device,
                                   batch_size=args.batch_size)
        except (FileExistsError, ModelFileError, FileNotFoundError) as e:
            import sys

            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(res)} predictions to {args.out}")
        return 0

    p.set_defaults(func=_run)


__all__ = ["load_model", "predict", "predict_manifest", "save_model", "read_model_meta", "ModelFileError",
           "register"]
