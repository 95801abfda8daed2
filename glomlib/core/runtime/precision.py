"""The precision policy: every step asks :func:`plan` what to run on and how; the reason goes into provenance."""

from __future__ import annotations

import os

import torch

from glomlib.core.errors import ConfigError
from glomlib.core.runtime.calibration import calibrate
from glomlib.core.runtime.hardware import Plan, Workload, cpu_capabilities, cpu_model, onednn_isa_cap, resolve_device

PRECISIONS = ("auto", "bf16", "fp32")


def choose_precision(device: torch.device) -> tuple[str, bool, str]:
    """(precision, channels_last, reason) that this hardware runs fastest, decided from its capabilities."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", True, f"CUDA {torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", True, f"CUDA {torch.cuda.get_device_name(device)} has no bf16"
    if device.type == "mps":
        return "fp32", False, "Apple MPS: fp32, contiguous"
    caps = cpu_capabilities()
    forced = (
        " (forced by GLOMLIB_CPU_BF16)"
        if caps["forced"]
        else f" (oneDNN capped at {onednn_isa_cap()} by ONEDNN_MAX_CPU_ISA)"
        if caps["isa_capped"]
        else ""
    )
    if not caps["known"]:
        return "fp32", True, f"CPU {cpu_model()}: this torch cannot tell whether it has native bf16"
    if caps["native_bf16"]:
        which = "forced" if caps["forced"] else ("AMX" if caps["amx_tile"] else "AVX-512-BF16")
        return "bf16", True, f"CPU {cpu_model()} has native bf16 ({which})"
    return "fp32", True, f"CPU {cpu_model()} has no native bf16{forced}: fp32 + channels_last"


def _calibrate_wanted(device: torch.device) -> bool:
    env = os.environ.get("GLOMLIB_PRECISION_CALIBRATE", "").strip().lower()
    if env in ("1", "true", "yes"):
        return True
    if env in ("0", "false", "no"):
        return False
    if device.type != "cpu":
        return False
    caps = cpu_capabilities()
    # native bf16 is necessary, not sufficient: whether bf16 pays depends on the model (measured on an AMD EPYC with
    # AVX-512-BF16: ResNet-18 2.2x faster in bf16, EfficientNet-Lite0's depthwise convolutions 0.6-0.8x), so a CPU
    # with native bf16 confirms the rule per workload; without it bf16 is emulated and fp32 always wins
    return not caps["known"] or (caps["native_bf16"] and not caps["forced"])


def plan(
    device: str | None = "auto", precision: str = "auto", *, local_rank: int = 0, workload: Workload | None = None
) -> Plan:
    """Decide device, precision and memory format for a step. ``precision``: auto | bf16 | fp32.

    ``auto`` follows the hardware's capabilities (:func:`choose_precision`). When the step passes its
    ``workload`` and bf16 may pay — a CPU with native bf16 (whether bf16 is faster depends on the model), a CPU
    this torch cannot query, or ``$GLOMLIB_PRECISION_CALIBRATE=1`` — a short timed calibration (:func:`calibrate`,
    cached per CPU model, backbone and size) decides between fp32 + channels_last and bf16 + channels_last; its
    timings go into the plan. ``$GLOMLIB_PRECISION_CALIBRATE=0`` or ``$GLOMLIB_CPU_BF16`` keep the rule alone.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    dev = resolve_device(device, local_rank)
    auto_prec, auto_cl, why = choose_precision(dev)
    if precision == "auto":
        can_bf16 = dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_bf16_supported())
        if workload is not None and can_bf16 and _calibrate_wanted(dev):
            cal = calibrate(dev, workload)
            best = cal["chosen"]
            return Plan(
                dev,
                best,
                True,
                f"auto: timed calibration chose {best} + channels_last "
                f"({cal['speedup_bf16']:.2f}x bf16 vs fp32; rule alone: {why})",
                cal,
            )
        return Plan(dev, auto_prec, auto_cl, f"auto: {why}")
    if precision == "bf16" and dev.type == "mps":
        raise ConfigError("precision='bf16' is not supported on Apple MPS; use fp32 or auto.")
    return Plan(dev, precision, auto_cl, f"asked for {precision} ({why})")
