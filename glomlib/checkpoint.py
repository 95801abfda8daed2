"""Saving and loading without surprises.

* :func:`atomic_save` writes a checkpoint to a temporary file in the same folder, fsyncs it and renames it
  over the target, so a run killed at any moment leaves either the old or the new file, never half of one.
* :func:`load_checkpoint` loads with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
  dicts only; no arbitrary objects are unpickled. Keep checkpoints to those types (configs as dicts,
  RNG states as tensors).
* :func:`save_encoder` / :func:`load_encoder_into`: a backbone's weights as safetensors with metadata
  (backbone name, image size, normalisation, data fingerprint...), the file fine-tuning's ``init=glom`` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

ENCODER_FORMAT = "glomlib-encoder-v1"


class EncoderFileError(ValueError):
    """An encoder file is missing, unreadable or for another backbone; the message says what to do."""


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        torch.save(obj, tmp)
        _fsync_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save` with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    return torch.load(path, map_location=map_location, weights_only=True)


def _meta_to_strings(meta: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in meta.items():
        out[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def meta_from_strings(meta: dict[str, str]) -> dict[str, Any]:
    """Decode safetensors metadata written by :func:`save_safetensors_atomic` (JSON values, plain strings kept)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


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
    from .models import IMAGENET_MEAN, IMAGENET_STD

    full = {"format": ENCODER_FORMAT, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    return save_safetensors_atomic(unwrap(backbone), full, path)


def save_safetensors_atomic(module, meta: dict[str, Any], path: str | Path) -> Path:
    """Write ``module``'s state_dict as safetensors with ``meta`` (JSON-encoded values) atomically (tmp + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    tmp = _tmp_path(path)
    try:
        save_file(sd, str(tmp), metadata=_meta_to_strings(meta))
        os.chmod(tmp, 0o644)
        _fsync_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_encoder_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of an encoder file (without loading its tensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EncoderFileError(
            f"Encoder file {path} does not exist. Run SSL pretraining first (notebook 02 or `glomlib ssl`), "
            "which writes <run>/encoder.safetensors, and pass that path."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise EncoderFileError(f"{path} is not a readable safetensors encoder file: {e}") from e
    return meta_from_strings(meta)


def load_encoder_into(backbone: nn.Module, path: str | Path, expect_backbone: str | None = None,
                      strict: bool = True) -> dict[str, Any]:
    """Load an encoder file into ``backbone`` (in place) and return its metadata.

    Raises :class:`EncoderFileError` if the file is missing, was saved for another backbone than
    ``expect_backbone``, or its tensors do not fit.
    """
    from safetensors.torch import load_file

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
