"""Embeddings for selection: one encoder's frozen features of a manifest, L2-normalised, computed once and cached.

The cache key is the encoder (file content hash, or backbone + ``imagenet``/``scratch``), the image size, the stain
option a glom encoder was pretrained with (its metadata's ``stain_normalize``: the images are normalised the same way
before embedding) and the images' content hashes in order, so a changed image or encoder never reuses a stale
embedding.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from glomlib.core.errors import ConfigError

BUILTIN = ("imagenet", "scratch")


def latest_encoder(root: str | Path = "runs") -> Path:
    """The newest ``encoder.safetensors`` under ``root`` (an SSL run of notebook 02 or ``glomlib ssl``)."""
    found = (
        sorted(Path(root).glob("**/encoder.safetensors"), key=lambda p: p.stat().st_mtime)
        if Path(root).exists()
        else []
    )
    if not found:
        raise FileNotFoundError(
            f"encoder='latest' but no SSL run (a folder with encoder.safetensors) exists under {Path(root).resolve()}. "
            "Run `glomlib ssl` (or notebook 02) first, or pass encoder=imagenet or an encoder.safetensors path."
        )
    return found[-1]


def resolve_encoder(encoder: str, backbone: str, image_size: int) -> dict[str, Any]:
    """``{kind, path, backbone, image_size, label}`` for ``encoder`` = latest | imagenet | scratch | a file."""
    if encoder in BUILTIN:
        return {
            "kind": encoder,
            "path": "",
            "backbone": backbone,
            "image_size": int(image_size or 96),
            "label": f"{encoder} {backbone}",
            "stain": "",  # ImageNet weights (or random ones) saw no stain-normalised image
        }
    from glomlib.models.files import read_encoder_meta

    path = latest_encoder() if encoder in ("", "latest") else Path(encoder)
    meta = read_encoder_meta(path)
    size = int(image_size or meta.get("image_size") or 96)
    return {
        "kind": "glom",
        "path": str(path),
        "backbone": str(meta.get("backbone", backbone)),
        "image_size": size,
        "label": f"glom ({path})",
        "stain": str(meta.get("stain_normalize") or ""),  # the images fed as the encoder was pretrained on them
    }


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(enc: dict[str, Any], hashes: list[str]) -> str:
    who = _file_sha(enc["path"]) if enc["path"] else f"{enc['backbone']}-{enc['kind']}"
    stain = f"{enc['stain']}|" if enc.get("stain") else ""  # "" keeps the keys of unnormalised embeddings
    h = hashlib.sha256(f"{who}|{enc['image_size']}|{stain}".encode())
    h.update("\n".join(hashes).encode())
    return h.hexdigest()[:24]


def _compute(df, enc: dict[str, Any], batch_size: int, device: str) -> np.ndarray:
    import torch

    from glomlib.core import runtime
    from glomlib.data.cache import load_images
    from glomlib.data.stain import normalize_stain
    from glomlib.models.backbones import build_backbone
    from glomlib.models.files import load_encoder_into
    from glomlib.models.inference import extract_features

    images = load_images(df["path"].tolist(), enc["image_size"], hashes=df["sha256"].tolist())
    images = normalize_stain(np.array(images), enc["stain"]) if enc.get("stain") else images
    torch.manual_seed(0)  # scratch weights are reproducible
    model, _ = build_backbone(enc["backbone"], init="scratch" if enc["path"] else enc["kind"])
    if enc["path"]:
        load_encoder_into(model, enc["path"], expect_backbone=enc["backbone"])
    p = runtime.plan(device, "fp32")
    return extract_features(model, images, batch_size=batch_size, image_size=enc["image_size"], plan=p)


def embed(
    df,
    encoder: str = "latest",
    backbone: str = "efficientnet_lite0",
    image_size: int = 0,
    batch_size: int = 128,
    device: str = "auto",
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """L2-normalised features ``(len(df), D)`` of a manifest's images (``read_manifest`` rows), cached on disk."""
    if df.empty:
        raise ConfigError("embed: the manifest has no rows.")
    from glomlib.data.cache import default_cache_dir

    enc = resolve_encoder(encoder, backbone, image_size)
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "embeddings"
    path = folder / f"{cache_key(enc, df['sha256'].tolist())}.npy"
    if path.is_file():
        feats = np.load(path)
    else:
        from glomlib.core.io import write_with

        feats = _compute(df, enc, batch_size, device)
        buf = io.BytesIO()
        np.save(buf, feats)
        folder.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    norm = np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return (feats / norm).astype(np.float32)


def reduce(X: np.ndarray, dims: int, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """PCA to ``dims`` components fitted on ``fit_rows`` only (the pool: never test slides), then L2-normalised,
    so distances lie in [0, 2] (ProbCover's radii assume this). ``dims`` 0 keeps the embedding as it is."""
    if dims <= 0 or dims >= min(X.shape):
        return X
    from sklearn.decomposition import PCA

    fit = X if fit_rows is None else X[fit_rows]
    Z = PCA(n_components=min(dims, len(fit) - 1), random_state=0).fit(fit).transform(X)
    return (Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)).astype(np.float32)
