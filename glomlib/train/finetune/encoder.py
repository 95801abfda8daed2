"""The initial backbone of a fine-tune: the SSL encoder (resolved once per run), ImageNet weights or random."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from glomlib.core import runs
from glomlib.models.backbones import build_backbone
from glomlib.models.files import load_encoder_into
from glomlib.train.finetune.config import FinetuneConfig


def ssl_encoders(cfg: FinetuneConfig, df: pd.DataFrame) -> dict[str | None, Path]:
    """Every encoder file the run needs, checked before any training: ``{None: file}`` for a glom run,
    ``{centre: file}`` when ``ssl_checkpoint`` holds ``{centre}`` (the message lists the missing ones and how to
    make them), ``{}`` for imagenet / scratch."""
    if cfg.init != "glom":
        return {}
    spec = cfg.encoder_spec
    if not cfg.per_centre_encoders:
        return {None: runs.encoder_path(spec)}
    centres = sorted(set(df["center"].astype(str).str.strip()) - {""})
    found, missing = {}, []
    for c in centres:
        try:
            found[c] = runs.encoder_path(spec.replace("{centre}", c))
        except FileNotFoundError:
            missing.append(spec.replace("{centre}", c))
    if missing:
        how = f"`glomlib ssl --exclude-centre <C> --out {spec.replace('{centre}', '<C>')}` for C in {centres}"
        raise FileNotFoundError(
            f"ssl_checkpoint={spec!r}: no encoder for held-out centre(s) {missing}. Pretrain one "
            f"per centre without it, e.g. {how}."
        )
    return found


def _check_encoder_meta(cfg: FinetuneConfig, meta: dict[str, Any]) -> None:
    ssl_stain, size = meta.get("stain_normalize", ""), meta.get("image_size")
    if str(ssl_stain or "") != cfg.stain_method:  # an encoder without the key (older runs) was trained without
        warnings.warn(
            f"The SSL encoder was pretrained with stain_normalize={ssl_stain or ''!r} but this fine-tune uses "
            f"{cfg.stain_method!r}: the encoder sees other colours than it learnt from (pretrain it with the same option).",
            stacklevel=3,
        )
    if size not in (None, "") and int(size) != int(cfg.image_size):
        warnings.warn(
            f"The SSL encoder was pretrained at {size} px but image_size={cfg.image_size}; fine-tuning "
            "at a different size than pretraining usually costs accuracy.",
            stacklevel=3,
        )


def build_initial_backbone(cfg: FinetuneConfig, encoder: Path | None = None):
    """The backbone for ``cfg.init`` (``encoder``: the SSL encoder file of a glom run) -> (module, dim, info)."""
    info: dict[str, Any] = {"init": cfg.init}
    if cfg.init != "glom":
        weights = (cfg.imagenet_weights or None) if cfg.init == "imagenet" else None
        return (*build_backbone(cfg.backbone, init=cfg.init, weights_path=weights), info)
    if encoder is None:
        raise ValueError("init='glom' needs the SSL encoder file (see ssl_encoders).")
    backbone, dim = build_backbone(cfg.backbone, init="scratch")
    meta = load_encoder_into(backbone, encoder, expect_backbone=cfg.backbone)
    info["ssl_checkpoint"] = str(Path(encoder).resolve())
    if isinstance(meta, dict):
        info["ssl_meta"] = {k: meta[k] for k in list(meta)[:20]}
        info["ssl_meta"].update({k: meta[k] for k in ("exclude_centre", "stain_normalize") if k in meta})
        _check_encoder_meta(cfg, meta)
    return backbone, dim, info
