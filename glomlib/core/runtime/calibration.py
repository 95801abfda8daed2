"""A short timed calibration of fp32 vs bf16 for one workload, cached per CPU model, backbone and size."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glomlib.core.io import write_json_atomic
from glomlib.core.paths import project_root
from glomlib.core.runtime.hardware import Plan, Workload, autocast, cpu_capabilities, cpu_model, onednn_isa_cap

CALIBRATION_FILE = "precision-calibration.json"
_CALIBRATION_MEMO: dict[str, dict[str, Any]] = {}


def calibration_path() -> Path:
    """``$GLOMLIB_CACHE/precision-calibration.json`` or ``<project root>/data/cache/precision-calibration.json``."""
    env = os.environ.get("GLOMLIB_CACHE")
    if env:
        return Path(env).expanduser() / CALIBRATION_FILE

    return project_root() / "data" / "cache" / CALIBRATION_FILE


def calibration_key(device: torch.device, w: Workload) -> str:
    hw = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    caps = cpu_capabilities() if device.type == "cpu" else {}
    forced = f"|forced-bf16={int(caps['native_bf16'])}" if caps.get("forced") else ""
    forced += f"|onednn-isa={onednn_isa_cap()}" if device.type == "cpu" and onednn_isa_cap() else ""
    return (
        f"{device.type}|{hw}|threads={torch.get_num_threads()}|torch={torch.__version__}|{w.name}|"
        f"{w.image_size}px|batch={_calibration_batch(w)}|{'train' if w.train else 'infer'}{forced}"
    )


def _calibration_batch(w: Workload) -> int:
    """A batch small enough to time quickly, large enough to be representative (~32 images at 96 px)."""
    return int(max(2, min(w.batch_size, round(32 * (96 / w.image_size) ** 2))))


def _mode_step(device: torch.device, w: Workload, bf16: bool, channels_last: bool = True) -> Callable[[], float]:
    """A function running one forward (+ backward when training) step of ``w`` in one mode; returns seconds."""

    torch.manual_seed(0)
    model = w.build().to(device)
    model.train(w.train)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    b = _calibration_batch(w)
    x = torch.randn(b, 3, w.image_size, w.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = Plan(device, "bf16" if bf16 else "fp32", channels_last, "calibration")

    def step() -> float:
        t = time.perf_counter()
        if w.train:
            with autocast(p):
                out = model(x)
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast(p):
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    return step


def calibrate(device: torch.device, w: Workload, *, steps: int = 3, use_cache: bool = True) -> dict[str, Any]:
    """Time ``w`` in fp32 + channels_last and bf16 autocast + channels_last; the faster wins (bf16 must be
    at least 5 % faster, since fp32 is the safer choice). Cached in :func:`calibration_path` by
    :func:`calibration_key`."""

    key = calibration_key(device, w)
    path = calibration_path()
    if use_cache and key in _CALIBRATION_MEMO:
        return _CALIBRATION_MEMO[key]
    stored: dict[str, Any] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):  # a damaged cache is only a cache: time again and rewrite it
            stored = {}
    if use_cache and isinstance(stored.get(key), dict) and "chosen" in stored[key]:
        _CALIBRATION_MEMO[key] = {**stored[key], "cached": True}
        return _CALIBRATION_MEMO[key]
    b = _calibration_batch(w)
    modes = {"fp32": _mode_step(device, w, bf16=False), "bf16": _mode_step(device, w, bf16=True)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(steps + 1):  # one warm-up step each, then alternate so that other load hits both alike
        for m, step in modes.items():
            t = step()
            if i:
                times[m].append(t)
    t32, t16 = float(np.median(times["fp32"])), float(np.median(times["bf16"]))
    chosen = "bf16" if t16 < t32 / 1.05 else "fp32"
    res = {
        "chosen": chosen,
        "key": key,
        "batch": b,
        "steps": steps,
        "images_per_s": {"fp32+channels_last": b / t32, "bf16+channels_last": b / t16},
        "speedup_bf16": t32 / t16,
        "measured_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cached": False,
    }
    stored[key] = {k: v for k, v in res.items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, stored)
        res["cache_file"] = str(path)
    except OSError as e:  # a read-only cache folder costs a re-timing next time, nothing more
        res["cache_file"] = f"not written: {e}"
    _CALIBRATION_MEMO[key] = res
    return res
