"""What this machine offers (CPU capabilities, devices) and the :class:`Plan` a step runs with."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
from collections.abc import Callable, Iterator
from typing import Any

import torch

from glomlib.core.errors import ConfigError


def cpu_model() -> str:
    """The CPU's model name (e.g. 'AMD EPYC 9454'), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: oneDNN ISA levels (``ONEDNN_MAX_CPU_ISA``) below ``AVX512_CORE_BF16``: oneDNN then has no bf16 kernels and
#: emulates bf16 (2-6x slower than fp32, measured), exactly as on a CPU without native bf16
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap() -> str:
    """The oneDNN ISA cap set in the environment (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``), upper
    case, or "" when none (``ALL`` counts as none)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return "" if cap in ("", "ALL", "DEFAULT") else cap


def cpu_capabilities() -> dict[str, bool]:
    """What this CPU does natively (torch's own checks; private API, guarded).

    ``known`` is False when this torch cannot tell (the checks are missing or fail): the policy then confirms
    its choice with a timed calibration. A oneDNN ISA cap below bf16 (``ONEDNN_MAX_CPU_ISA``, e.g. AVX512_CORE:
    see :data:`ONEDNN_ISAS_WITHOUT_BF16`) means no native bf16 for the convolutions, whatever the CPU has
    (``isa_capped`` True) — which is also how a CPU without native bf16 is emulated on one that has it.
    ``$GLOMLIB_CPU_BF16=0|1`` forces the native-bf16 answer (``forced`` True).
    """
    caps: dict[str, bool] = {}
    known = True
    for name, fn in (
        ("avx512", "_is_avx512_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
        ("amx_tile", "_is_amx_tile_supported"),
    ):
        f = getattr(torch.cpu, fn, None)
        try:
            caps[name] = bool(f()) if f else False
        except Exception:
            caps[name] = False
            f = None
        if f is None and name != "avx512":
            known = False
    caps["native_bf16"] = caps["avx512_bf16"] or caps["amx_tile"]
    caps["known"] = known or caps["native_bf16"]  # a 'yes' from either check settles it
    caps["isa_capped"] = onednn_isa_cap() in ONEDNN_ISAS_WITHOUT_BF16
    if caps["isa_capped"]:
        caps["native_bf16"], caps["known"] = False, True
    forced = os.environ.get("GLOMLIB_CPU_BF16", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(
                f"GLOMLIB_CPU_BF16={forced!r}: use 1 (treat the CPU as native bf16), 0 (as not), or unset it."
            )
        caps["native_bf16"] = forced == "1"
        caps["known"] = True
    caps["forced"] = bool(forced)
    return caps


def resolve_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA if available, else Apple MPS, else CPU. Explicit names are checked."""
    if name in ("auto", "", None):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps.") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but no CUDA GPU is available here; use device='cpu' or 'auto'.")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device={name!r} but Apple MPS is not available here; use device='cpu' or 'auto'.")
    return dev


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a step runs: device, precision ('bf16' | 'fp32'), memory format, and why (``calibration``: the
    timings that decided it, when a calibration ran)."""

    device: torch.device
    precision: str
    channels_last: bool
    reason: str
    calibration: dict[str, Any] | None = None

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "reason": self.reason,
        }
        if self.calibration is not None:
            d["calibration"] = self.calibration
        if self.device.type == "cpu":
            d["cpu"] = cpu_model()
            d["cpu_capabilities"] = cpu_capabilities()
            d["threads"] = torch.get_num_threads()
        elif self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a step will run, for the timed calibration: a name for the cache key (e.g. the backbone), the input
    size and batch, a function that builds a fresh model (called once per timed mode) and whether it trains."""

    name: str
    image_size: int
    batch_size: int
    build: Callable[[], torch.nn.Module]
    train: bool = True


@contextlib.contextmanager
def autocast(p: Plan) -> Iterator[None]:
    """bf16 autocast when the plan says bf16; a no-op otherwise."""
    if p.bf16:
        with torch.autocast(device_type=p.device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
