"""The one runtime: device, precision, memory format, autocast, LR schedules, seeding, RNG state, normalisation.

Every step (SimCLR, fine-tuning, probing, prediction, explanation) asks :func:`plan` what to run on and how, so the
hardware policy is decided here once and written into provenance with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from glomlib.core.config import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


# --------------------------------------------------------------------------------------------- hardware
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
    for name, fn in (("avx512", "_is_avx512_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
                     ("amx_tile", "_is_amx_tile_supported")):
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
            raise ConfigError(f"GLOMLIB_CPU_BF16={forced!r}: use 1 (treat the CPU as native bf16), 0 (as not), "
                              "or unset it.")
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
        d: dict[str, Any] = {"device": str(self.device), "precision": self.precision,
                             "channels_last": self.channels_last, "reason": self.reason}
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


def choose_precision(device: torch.device) -> tuple[str, bool, str]:
    """(precision, channels_last, reason) that this hardware runs fastest, decided from its capabilities."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", True, f"CUDA {torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", True, f"CUDA {torch.cuda.get_device_name(device)} has no bf16"
    if device.type == "mps":
        return "fp32", False, "Apple MPS: fp32, contiguous"
    caps = cpu_capabilities()
    forced = (" (forced by GLOMLIB_CPU_BF16)" if caps["forced"] else
              f" (oneDNN capped at {onednn_isa_cap()} by ONEDNN_MAX_CPU_ISA)" if caps["isa_capped"] else "")
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


def plan(device: str | None = "auto", precision: str = "auto", *, local_rank: int = 0,
         workload: Workload | None = None) -> Plan:
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
            return Plan(dev, best, True, f"auto: timed calibration chose {best} + channels_last "
                                         f"({cal['speedup_bf16']:.2f}x bf16 vs fp32; rule alone: {why})", cal)
        return Plan(dev, auto_prec, auto_cl, f"auto: {why}")
    if precision == "bf16" and dev.type == "mps":
        raise ConfigError("precision='bf16' is not supported on Apple MPS; use fp32 or auto.")
    return Plan(dev, precision, auto_cl, f"asked for {precision} ({why})")


# ------------------------------------------------------------------------------------------- calibration
CALIBRATION_FILE = "precision-calibration.json"
_CALIBRATION_MEMO: dict[str, dict[str, Any]] = {}


def calibration_path() -> Path:
    """``$GLOMLIB_CACHE/precision-calibration.json`` or ``<project root>/data/cache/precision-calibration.json``."""
    env = os.environ.get("GLOMLIB_CACHE")
    if env:
        return Path(env).expanduser() / CALIBRATION_FILE
    from glomlib.core.paths import project_root

    return project_root() / "data" / "cache" / CALIBRATION_FILE


def calibration_key(device: torch.device, w: Workload) -> str:
    hw = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    caps = cpu_capabilities() if device.type == "cpu" else {}
    forced = f"|forced-bf16={int(caps['native_bf16'])}" if caps.get("forced") else ""
    forced += f"|onednn-isa={onednn_isa_cap()}" if device.type == "cpu" and onednn_isa_cap() else ""
    return (f"{device.type}|{hw}|threads={torch.get_num_threads()}|torch={torch.__version__}|{w.name}|"
            f"{w.image_size}px|batch={_calibration_batch(w)}|{'train' if w.train else 'infer'}{forced}")


def _calibration_batch(w: Workload) -> int:
    """A batch small enough to time quickly, large enough to be representative (~32 images at 96 px)."""
    return int(max(2, min(w.batch_size, round(32 * (96 / w.image_size) ** 2))))


def _mode_step(device: torch.device, w: Workload, bf16: bool, channels_last: bool = True) -> Callable[[], float]:
    """A function running one forward (+ backward when training) step of ``w`` in one mode; returns seconds."""
    import time

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
    import datetime as _dt

    from glomlib.core.io import write_json_atomic

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
    res = {"chosen": chosen, "key": key, "batch": b, "steps": steps,
           "images_per_s": {"fp32+channels_last": b / t32, "bf16+channels_last": b / t16},
           "speedup_bf16": t32 / t16, "measured_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "cached": False}
    stored[key] = {k: v for k, v in res.items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, stored)
        res["cache_file"] = str(path)
    except OSError as e:  # a read-only cache folder costs a re-timing next time, nothing more
        res["cache_file"] = f"not written: {e}"
    _CALIBRATION_MEMO[key] = res
    return res


@contextlib.contextmanager
def autocast(p: Plan) -> Iterator[None]:
    """bf16 autocast when the plan says bf16; a no-op otherwise."""
    if p.bf16:
        with torch.autocast(device_type=p.device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


# ------------------------------------------------------------------------------------------ input tensors
def to_input(batch_uint8: Any, mean: Sequence[float], std: Sequence[float], p: Plan | None = None, *,
             device: torch.device | str | None = None, channels_last: bool | None = None) -> torch.Tensor:
    """uint8 NHWC images (numpy or tensor) -> normalised float NCHW on the plan's device and memory format."""
    dev = p.device if p is not None else torch.device(device or "cpu")
    cl = p.channels_last if (p is not None and channels_last is None) else bool(channels_last)
    if isinstance(batch_uint8, torch.Tensor):
        x = batch_uint8
    else:
        arr = np.asarray(batch_uint8)
        x = torch.from_numpy(arr.copy() if not arr.flags.writeable else np.ascontiguousarray(arr))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if cl else x.contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float NCHW in [0, 1] -> (x - mean) / std."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x * s + m


# --------------------------------------------------------------------------------------------- schedules
def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (per optimisation step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """LambdaLR with :func:`lr_factor` (stepped once per optimisation step)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup_steps))


# ----------------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Torch/numpy/python RNG states as tensors and plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"].cpu())
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in st["cuda"]])


def default_num_threads() -> int:
    """Torch intra-op threads: all cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
