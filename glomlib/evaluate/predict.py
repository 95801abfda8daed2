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
import pandas as pd

from glomlib.core import runtime
from glomlib.core.io import write_csv_atomic
from glomlib.data.cache import load_images
from glomlib.data.manifest import read_manifest
from glomlib.models.files import MODEL_FORMAT, ModelFileError, load_model, read_model_meta, save_model
from glomlib.models.inference import predict_probs

def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def predict(model, meta: dict[str, Any], images, batch_size: int = 64, device: str | None = None,
            precision: str = "auto") -> np.ndarray:
    """Probability of ``meta['positive_label']`` for each image.

    ``images``: uint8 RGB ``(N, H, W, 3)`` (resized to ``meta['image_size']`` when needed) or a list of file
    paths (decoded through :func:`glomlib.data.cache.load_images`).
    """
    size = int(meta["image_size"])
    if isinstance(images, (list, tuple)) and (not images or isinstance(images[0], (str, Path))):
        images = np.asarray(load_images([str(p) for p in images], size))
    images = np.array(images)  # a writable copy (the cache hands out read-only memmaps)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"predict expects uint8 RGB images (N, H, W, 3); got {images.dtype} {images.shape}.")
    images = _resize(images, size)
    dev = next(model.parameters()).device if device is None else runtime.resolve_device(device)
    model.to(dev)
    return predict_probs(model, images, mean=meta["mean"], std=meta["std"], plan=runtime.plan(str(dev), precision),
                         batch_size=batch_size).astype(float)


def predict_manifest(model_path: str | Path, manifest: str | Path, out: str | Path, device: str = "auto",
                     batch_size: int = 64):
    """Predict every image of ``manifest`` and write ``out`` (CSV). Refuses to overwrite ``out``."""
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
    write_csv_atomic(res, out)
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
