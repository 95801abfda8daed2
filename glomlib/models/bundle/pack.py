"""``bundle.safetensors``: packing member model files into one file, and loading it back, checksums verified.

Every member's tensors are stored as they were in its own file (a float16 fold model stays float16) under
``members.<i>.``; the metadata lists each member with the sha256 of its tensors (names, dtypes, shapes, bytes),
and, as for a single model file, a sha256 over the metadata and all tensor shapes (``meta_sha256``)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from glomlib.core import runtime
from glomlib.core.io import write_with
from glomlib.models.bundle.ensemble import COMBINE_WHY, COMBINES, DEFAULT_COMBINE, BundleModel
from glomlib.models.files import _DTYPES, BUNDLE_FORMAT, ModelFileError, read_model_meta, register_format, unwrap
from glomlib.models.heads import build_classifier
from glomlib.models.integrity import CHECKSUM_KEY, checksum, meta_from_strings, meta_problems, meta_to_strings

BUNDLE_FILE = "bundle.safetensors"
SHARED = ("backbone", "image_size", "mean", "std", "positive_label", "negative_label", "stain_normalize")
PER_MEMBER = ("fold", "seed", "test_slides", "epochs", "n_train", "cv_auc", "zeroed_nonfinite", "weights_dtype")


def is_bundle(meta_or_model: Any) -> bool:
    if isinstance(meta_or_model, Mapping):
        return meta_or_model.get("format") == BUNDLE_FORMAT
    return bool(getattr(unwrap(meta_or_model), "is_bundle", False))


def tensors_sha256(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict as stored: every tensor's name, dtype, shape and bytes, in name order."""
    d = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        d.update(f"{k}|{t.dtype}|{list(t.shape)}\n".encode())
        d.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return d.hexdigest()


def save_bundle(
    members: Sequence[tuple[dict[str, torch.Tensor], dict[str, Any]]], meta: Mapping[str, Any], path: str | Path
) -> Path:
    """Write ``path`` from ``members`` = [(state dict, info: name, source, seed, fold...)] and the bundle's
    ``meta`` (the model keys; ``combine`` defaults to :data:`DEFAULT_COMBINE`). Written atomically."""
    if not members:
        raise ValueError("save_bundle: a bundle needs at least one member.")
    combine = meta.get("combine", DEFAULT_COMBINE)
    if combine not in COMBINES:
        raise ValueError(f"save_bundle: combine={combine!r} is not one of {list(COMBINES)}.")
    sd, infos = {}, []
    for i, (msd, info) in enumerate(members):
        sd.update({f"members.{i}.{k}": v.detach().cpu().contiguous() for k, v in msd.items()})
        infos.append({**info, "sha256": tensors_sha256(msd)})
    keep = {k: v for k, v in meta.items() if k not in (CHECKSUM_KEY, "format", *PER_MEMBER)}
    why = meta.get("combine_why", COMBINE_WHY if combine == DEFAULT_COMBINE else "chosen by the caller")
    full = {"format": BUNDLE_FORMAT, **keep, "combine": combine, "combine_why": why, "members": infos}
    stored = meta_to_strings(full)
    bad = meta_problems(meta_from_strings(stored))
    if bad:
        raise ModelFileError(f"save_bundle: refusing to write {path}: {'; '.join(bad)}.")
    shapes = ((k, list(v.shape), _DTYPES.get(v.dtype, str(v.dtype))) for k, v in sd.items())
    stored[CHECKSUM_KEY] = checksum(stored, shapes)
    return write_with(path, lambda tmp: save_file(sd, str(tmp), metadata=stored), fsync=True)


def pack_files(paths: Sequence[str | Path], out: str | Path, meta_from: str | Path | None = None, **extra) -> Path:
    """A bundle of model files (read as stored, each checked); the shared keys, threshold and stain option come
    from ``meta_from`` (default: the last file, e.g. the final model). Members must agree on :data:`SHARED`."""
    metas = [read_model_meta(p) for p in paths]
    base = read_model_meta(meta_from) if meta_from else metas[-1]
    for p, m in zip(paths, metas):
        diff = [k for k in SHARED if m.get(k) != base.get(k)]
        if diff:
            raise ModelFileError(f"{p} cannot join this bundle: it differs from the others in {diff}.")
    members = []
    for p, m in zip(paths, metas):
        same = Path(p).resolve().parent == Path(out).resolve().parent
        stem = Path(p).stem  # model.safetensors: "final"; finals/final-seed1000.safetensors: "final-seed1000"
        info = {
            "name": "final" if same and stem == "model" else stem if stem.startswith("final") else Path(p).parent.name
        }
        info.update({k: m[k] for k in ("seed", "fold", "label_fraction", "cv_auc") if k in m}, source=str(p))
        members.append((load_file(str(p)), info))
    return save_bundle(members, {**base, **extra}, out)


def save_bundle_module(model: BundleModel, meta: Mapping[str, Any], path: str | Path) -> Path:
    """A loaded (e.g. re-calibrated) bundle written again, float32, with its members' names kept."""
    model = unwrap(model)
    infos = list(meta.get("members") or [{"name": f"m{i}"} for i in range(len(model.members))])
    infos = [{k: v for k, v in info.items() if k != "sha256"} for info in infos]
    sds = [{k: v.float() if v.is_floating_point() else v for k, v in m.state_dict().items()} for m in model.members]
    return save_bundle(list(zip(sds, infos)), {**meta, "combine": model.combine}, path)


def load_bundle(path: str | Path, meta: Mapping[str, Any], device: str = "cpu") -> BundleModel:
    """The bundle of ``path`` (``meta``: its checked metadata) in eval mode; a member whose tensors do not match
    its recorded sha256 is refused (ModelFileError, exit 5)."""
    sd, infos = load_file(str(path)), list(meta.get("members") or [])
    if not infos:
        raise ModelFileError(f"{path}: a bundle without members; pack it again (glomlib finetune writes it).")
    nets = []
    for i, info in enumerate(infos):
        pre = f"members.{i}."
        msd = {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}
        if tensors_sha256(msd) != info.get("sha256"):
            raise ModelFileError(
                f"{path}: member {i} ({info.get('name')}) does not match its recorded sha256; the file was "
                "damaged or edited. Use the bundle.safetensors written by the fine-tune run, or pack it again."
            )
        net = build_classifier(meta["backbone"])
        try:
            net.load_state_dict(msd, strict=True)
        except RuntimeError as e:
            raise ModelFileError(f"{path}: member {i} does not fit a {meta['backbone']} classifier: {e}") from e
        nets.append(net)
    model = BundleModel(nets, meta.get("combine", DEFAULT_COMBINE))
    return model.to(runtime.resolve_device(device)).eval()


register_format(BUNDLE_FORMAT, load_bundle, save_bundle_module)
