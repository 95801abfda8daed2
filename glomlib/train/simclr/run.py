"""The whole SimCLR step: data -> run folder (config.json, provenance.json) -> :func:`pretrain` -> probe.json."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from glomlib.core import io, runtime
from glomlib.core.paths import DEFAULT_RUNS_ROOT
from glomlib.models.backbones import WeightsNotFoundError, build_backbone
from glomlib.train.resume import finished_outputs
from glomlib.train.simclr import dist as D
from glomlib.train.simclr.config import ENCODER_NAME, RESUME_FREE_FIELDS, SSLConfig
from glomlib.train.simclr.data import load_data
from glomlib.train.simclr.loop import SSLResult, pretrain, ssl_plan


def resume_hint(run_dir: str | Path) -> str:
    return f"glomlib ssl --out {run_dir} --resume true (with the same data and parameters)"


def _open_for_resume(cfg: SSLConfig, run_dir: str | Path, fingerprint: str | None, command: str) -> Path:
    return io.open_for_resume(
        run_dir,
        cfg.to_dict(),
        fingerprint,
        free_fields=RESUME_FREE_FIELDS,
        finished=finished_outputs(run_dir, (ENCODER_NAME,)),
        command=command,
    )


def prepare_run_dir(cfg: SSLConfig, fingerprint: str | None = None) -> Path:
    """The run folder: new for out='auto'; an existing ``out`` only with resume=True, and only when that run is
    unfinished and was made from the same data (``fingerprint``) and training settings (else ResumeError)."""
    path = ""
    if D.is_main():
        if cfg.out in ("", "auto"):
            path = str(io.new_run_dir(DEFAULT_RUNS_ROOT, "ssl"))
        elif cfg.resume:
            path = str(_open_for_resume(cfg, cfg.out, fingerprint, "e.g. --out auto"))
        else:
            path = str(io.ensure_new_dir(cfg.out))
    return Path(D.broadcast_str(path))


def run_ssl(cfg: SSLConfig, progress: bool | None = None, *, data=None, run_dir=None) -> SSLResult:
    """The whole step. ``data`` (from :func:`load_data`) and ``run_dir`` (from :func:`prepare_run_dir`) may be
    given when the caller (notebook 02) already has them. ``progress``: tqdm bars (default ``cfg.progress``).
    The run folder's ``run.json`` says running / finished / failed (with how to resume or start again)."""
    with io.run_status("ssl", resume_hint):
        return _run_ssl(cfg, cfg.progress if progress is None else progress, data, run_dir)


def _write_provenance(cfg: SSLConfig, run_dir: Path, data: dict[str, Any]) -> None:
    """config.json and provenance.json, written once; a resumed run adds provenance-resumed-<stamp>.json."""
    extra = {"n_images": int(len(data["images"])), "world_size": D.dist_info()[1]}
    extra.update(runtime=ssl_plan(cfg, D.dist_info()[2]).to_dict(), process_group=D.process_group())
    if cfg.resume and (run_dir / "provenance.json").exists():
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        doc = {"config": cfg.to_dict(), "data_fingerprint": data["fingerprint"], "git_commit": io.git_commit()}
        io.write_json_atomic(
            run_dir / f"provenance-resumed-{stamp}.json", {**doc, "versions": io.software_versions(), **extra}
        )
    else:
        cfg.save(run_dir / "config.json")
        io.write_provenance(run_dir, cfg, data["fingerprint"], extra=extra)


def _run_ssl(cfg: SSLConfig, progress: bool, data: dict[str, Any] | None, run_dir: str | Path | None) -> SSLResult:
    D.init_distributed(runtime.resolve_device(cfg.device, D.dist_info()[2]))  # before any rank-0-only work
    data = data if data is not None else load_data(cfg)
    if run_dir is None:
        run_dir = prepare_run_dir(cfg, data["fingerprint"])
    elif cfg.resume and D.is_main():  # a folder opened earlier (notebook 02): check it against the data read now
        _open_for_resume(cfg, run_dir, data["fingerprint"], "e.g. out='auto'")
    run_dir = Path(run_dir)
    if D.is_main():
        io.track_run(run_dir)
        _write_provenance(cfg, run_dir, data)
    kw = {"y": data["y"], "folds": data["folds"], "data_fingerprint": data["fingerprint"], "progress": progress}
    res = pretrain(cfg, data["images"], run_dir, **kw)
    if D.is_main() and cfg.final_probe and (data["folds"] >= 0).any():
        io.write_json_atomic(run_dir / "probe.json", final_probe(cfg, data, res.encoder_path))
    return res


def final_probe(cfg: SSLConfig, data: dict[str, Any], encoder_path: str | Path) -> dict[str, Any]:
    """Slide-grouped linear probe (and kNN) of frozen features: this run's encoder vs a randomly initialised
    encoder of the same architecture, and vs ImageNet weights when they are available offline."""
    from glomlib.evaluate.probe import knn_cv, linear_probe_cv
    from glomlib.models.files import load_encoder_into
    from glomlib.models.inference import extract_features

    y, folds = np.asarray(data["y"]), np.asarray(data["folds"])
    lab = np.nonzero((y >= 0) & (folds >= 0))[0]
    imgs = data["images"][lab] if len(lab) < len(y) else data["images"]
    out: dict[str, Any] = {"image_size": cfg.image_size, "backbone": cfg.backbone, "n": int(len(lab))}
    probe_plan = ssl_plan(cfg)  # the same runtime plan for all three encoders
    for name in ("glom", "random", "imagenet"):
        torch.manual_seed(cfg.seed)
        try:
            bb, _ = build_backbone(cfg.backbone, init="imagenet" if name == "imagenet" else "scratch")
        except WeightsNotFoundError:
            continue
        if name == "glom":
            load_encoder_into(bb, encoder_path, expect_backbone=cfg.backbone)
        f = extract_features(bb, imgs, batch_size=128, plan=probe_plan)
        out[name] = {**linear_probe_cv(f, y[lab], folds[lab]), **knn_cv(f, y[lab], folds[lab], k=cfg.knn_k)}
    return out


def probe_table(probe: dict[str, Any]) -> pd.DataFrame:
    """probe.json -> a small DataFrame (rows: glom / random / imagenet)."""
    names = {"auc_mean": "linear-probe AUC", "auc_std": "± (folds)", "knn_auc": "kNN AUC", "knn_acc": "kNN accuracy"}
    rows = [
        {"encoder": k, **{new: v[old] for old, new in names.items()}} for k, v in probe.items() if isinstance(v, dict)
    ]
    return pd.DataFrame(rows).set_index("encoder").round(3)
