"""Model, encoder and checkpoint files: safetensors + metadata validated on load, atomic checkpoints.

* :func:`atomic_save` writes a checkpoint to a temporary file in the same folder, fsyncs it and renames it
  over the target, so a run killed at any moment leaves either the old or the new file, never half of one.
* :func:`load_checkpoint` loads with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
  dicts only; no arbitrary objects are unpickled. Keep checkpoints to those types (configs as dicts,
  RNG states as tensors).
* :func:`save_encoder` / :func:`load_encoder_into`: a backbone's weights as safetensors with metadata
  (backbone name, image size, normalisation, data fingerprint...), the file fine-tuning's ``init=glom`` reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from glomlib.core import runtime
from glomlib.core.io import write_with
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from glomlib.models.heads import build_classifier
from glomlib.models.integrity import CHECKSUM_KEY, checksum, meta_from_strings, meta_problems, meta_to_strings

ENCODER_FORMAT = "glomlib-encoder-v1"


class EncoderFileError(ValueError):
    """An encoder file is missing, unreadable or for another backbone; the message says what to do."""

    exit_code = 5  # glomlib.cli's exit-code table


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (unique temp file + fsync + rename)."""
    return write_with(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save` with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    return torch.load(path, map_location=map_location, weights_only=True)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_encoder(path: str | Path, backbone: nn.Module, meta: dict[str, Any]) -> Path:
    """Save ``backbone``'s state dict as safetensors with ``meta`` (must include ``backbone``; recommended:
    ``image_size``, ``mean``, ``std``, ``data_fingerprint``, ``source``). Written atomically."""
    if "backbone" not in meta:
        raise ValueError("save_encoder: meta must include 'backbone' (e.g. 'resnet18').")
    full = {"format": ENCODER_FORMAT, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    return save_safetensors_atomic(unwrap(backbone), full, path)


def _state_dict(module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(module).state_dict().items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd


def save_safetensors_atomic(module, meta: dict[str, Any], path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``module``'s state_dict as safetensors with ``meta`` (JSON-encoded values) atomically.

    ``dtype`` (e.g. ``torch.float16``): store floating-point tensors in that type (half the file); integer tensors
    (BatchNorm counters) are kept. ``load_state_dict`` casts them back to the model's dtype on load."""

    sd = _state_dict(module, dtype)
    return write_with(path, lambda tmp: save_file(sd, str(tmp), metadata=meta_to_strings(meta)), fsync=True)


def _read_raw(path: Path, error: type[Exception], missing: str, kind: str) -> tuple[dict[str, str], list[tuple]]:
    """A safetensors file's stored metadata and its tensors' (name, shape, dtype), without reading the tensors."""
    if not path.is_file():
        raise error(missing)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = [(k, f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()]
            return dict(f.metadata() or {}), shapes
    except Exception as e:  # safetensors raises its own error types
        raise error(f"{path} is not a readable {kind}: {e}") from e


def _read_meta(path: Path, error: type[Exception], missing: str, kind: str) -> dict[str, Any]:
    """A safetensors file's metadata (without its tensors); ``error`` with ``missing`` when there is no file."""
    return meta_from_strings(_read_raw(path, error, missing, kind)[0])


def read_encoder_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of an encoder file (without loading its tensors)."""

    how = "Run SSL pretraining first (notebook 02 or `glomlib ssl`), which writes <run>/encoder.safetensors"
    missing = f"Encoder file {path} does not exist. {how}, and pass that path."
    return _read_meta(Path(path), EncoderFileError, missing, "safetensors encoder file")


def load_encoder_into(
    backbone: nn.Module, path: str | Path, expect_backbone: str | None = None, strict: bool = True
) -> dict[str, Any]:
    """Load an encoder file into ``backbone`` (in place) and return its metadata.

    Raises :class:`EncoderFileError` if the file is missing, was saved for another backbone than
    ``expect_backbone``, or its tensors do not fit.
    """

    meta = read_encoder_meta(path)
    saved = meta.get("backbone")
    if expect_backbone is not None and saved != expect_backbone:
        raise EncoderFileError(
            f"Encoder {path} was saved for backbone {saved!r} but {expect_backbone!r} was requested; "
            f"use backbone={saved!r} or pretrain an encoder for {expect_backbone!r}."
        )
    sd = load_file(str(path))
    target = unwrap(backbone)
    try:
        missing, unexpected = target.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise EncoderFileError(f"Encoder {path} does not fit this {type(target).__name__}: {e}") from e
    if strict and (missing or unexpected):
        raise EncoderFileError(
            f"Encoder {path} does not fit this {type(target).__name__}: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}."
        )
    return meta


# ------------------------------------------------------------------------------- fine-tuned model files
MODEL_FORMAT = "glomlib.train.finetune.model/1"
BUNDLE_FORMAT = "glomlib.models.bundle/1"  # glomlib.models.bundle: several models in one file, read like one
MODEL_FILE = "model.safetensors"
_REQUIRED = ("backbone", "image_size", "mean", "std", "positive_label")


# Other model formats register their (load(path, meta, device), save(model, meta, path)) here: the bundle package
# does (glomlib.models imports it), so this module never imports the formats built on it.
_FORMATS: dict[str, tuple[Callable, Callable]] = {}


def register_format(fmt: str, load: Callable, save: Callable) -> None:
    _FORMATS[fmt] = (load, save)


class ModelFileError(ValueError):
    """A model file is missing, unreadable or incomplete; the message says what to do."""

    exit_code = 5  # glomlib.cli's exit-code table


def save_model(model, meta: dict[str, Any], path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save a fine-tuned classifier (``glomlib.train.finetune`` model) with its metadata as safetensors, atomically.

    The metadata is checked first (a file :func:`load_model` would refuse is never written) and covered, with the
    tensors' shapes, by a checksum. ``dtype``: store floating-point weights in this type (``torch.float16`` halves
    the file; recorded as ``weights_dtype``); :func:`load_model` reads either into a float32 model."""
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"save_model: meta lacks {missing}.")
    if getattr(unwrap(model), "is_bundle", False):  # e.g. glomlib calibrate on a bundle
        return _FORMATS[BUNDLE_FORMAT][1](model, meta, path)
    extra = {"weights_dtype": str(dtype).replace("torch.", "")} if dtype is not None else {}
    full = {"format": MODEL_FORMAT, **{k: v for k, v in meta.items() if k != CHECKSUM_KEY}, **extra}
    stored = meta_to_strings(full)
    bad = meta_problems(meta_from_strings(stored))
    if bad:
        raise ModelFileError(f"save_model: refusing to write {path}: {'; '.join(bad)}.")
    sd = _state_dict(model, dtype)
    stored[CHECKSUM_KEY] = checksum(
        stored, ((k, list(v.shape), _DTYPES.get(v.dtype, str(v.dtype))) for k, v in sd.items())
    )
    return write_with(path, lambda tmp: save_file(sd, str(tmp), metadata=stored), fsync=True)


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}  # safetensors' names


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """A model file's metadata, refused (:class:`ModelFileError`, exit 5) when it is not a glomlib classifier, is
    incomplete or contradicts itself, or was edited after it was saved (its checksum)."""
    path = Path(path)
    how = "A fine-tune run (notebook 03 or `glomlib finetune`) writes <run>/model.safetensors; pass that path."
    missing = f"Model file {path} does not exist. {how}"
    if path.is_dir():
        found = sorted(str(p) for p in path.glob(f"**/{MODEL_FILE}"))[:3]
        missing = f"{path} is a folder, not a model file: pass its {MODEL_FILE}" + (
            f", e.g. {found}" if found else f" ({how})"
        )
    stored, shapes = _read_raw(path, ModelFileError, missing, "safetensors file")
    meta = meta_from_strings(stored)
    if meta.get("format") not in (MODEL_FORMAT, BUNDLE_FORMAT):
        raise ModelFileError(
            f"{path} is not a glomlib fine-tuned model (format={meta.get('format')!r}; expected "
            f"{MODEL_FORMAT!r}). An SSL encoder.safetensors is not a classifier: fine-tune it first."
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {missing}; the file is incomplete.")
    bad = meta_problems(meta)
    if CHECKSUM_KEY in stored and stored[CHECKSUM_KEY] != checksum(stored, shapes):
        bad.append("its metadata was edited or its weights do not fit what was saved (checksum mismatch)")
    if bad:
        raise ModelFileError(
            f"{path}: invalid metadata ({'; '.join(bad)}); the file was damaged or edited. Use "
            "the model.safetensors written by the fine-tune run, or fine-tune again."
        )
    meta.pop(CHECKSUM_KEY, None)
    return meta


def load_model(path: str | Path, device: str = "cpu"):
    """Load ``model.safetensors`` -> ``(model in eval mode, meta dict)``."""

    meta = read_model_meta(path)
    if meta["format"] in _FORMATS:
        return _FORMATS[meta["format"]][0](path, meta, device), meta
    model = build_classifier(meta["backbone"])
    sd = load_file(str(path))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit a {meta['backbone']} classifier: {e}") from e
    broken = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ModelFileError(
            f"{path}: weights hold NaN or infinite values ({broken[:3]}); the file was damaged, "
            "or training diverged. Fine-tune again."
        )
    model.to(runtime.resolve_device(device)).eval()
    return model, meta
