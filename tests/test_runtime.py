"""The runtime's hardware policy: capability rule, forced rule, timed calibration and its cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from glomlib.core import runtime
from glomlib.core.config import ConfigError


@pytest.fixture
def clean_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOMLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("GLOMLIB_CPU_BF16", raising=False)
    monkeypatch.delenv("GLOMLIB_PRECISION_CALIBRATE", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    runtime._CALIBRATION_MEMO.clear()
    yield tmp_path
    runtime._CALIBRATION_MEMO.clear()


def tiny_workload(calls: list):
    def build():
        calls.append(1)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        )

    return runtime.Workload("tiny-test-net", 16, 4, build)


@pytest.mark.parametrize("forced,expect", [("0", "fp32"), ("1", "bf16")])
def test_forced_rule_decides_auto_and_says_so(clean_runtime, monkeypatch, forced, expect):
    monkeypatch.setenv("GLOMLIB_CPU_BF16", forced)
    p = runtime.plan("cpu", "auto")
    assert p.precision == expect and p.channels_last
    assert "forced" in p.reason
    d = p.to_dict()
    assert d["cpu_capabilities"]["forced"] is True and d["cpu_capabilities"]["native_bf16"] is (forced == "1")


def test_forced_rule_rejects_other_values(clean_runtime, monkeypatch):
    monkeypatch.setenv("GLOMLIB_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match="GLOMLIB_CPU_BF16"):
        runtime.plan("cpu", "auto")


def test_rule_follows_torch_capability_checks(clean_runtime, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert runtime.plan("cpu", "auto").precision == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    p = runtime.plan("cpu", "auto")
    assert p.precision == "bf16" and "AMX" in p.reason
    assert p.calibration is None  # the rule was sure: no timing


def test_calibration_times_both_modes_records_and_caches(clean_runtime, monkeypatch):
    monkeypatch.setenv("GLOMLIB_PRECISION_CALIBRATE", "1")
    calls: list = []
    p = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2  # one fresh model per timed mode
    cal = p.calibration
    assert cal["chosen"] == p.precision and p.precision in ("fp32", "bf16")
    assert set(cal["images_per_s"]) == {"fp32+channels_last", "bf16+channels_last"}
    assert all(v > 0 for v in cal["images_per_s"].values())
    assert "timed calibration" in p.reason
    assert p.to_dict()["calibration"]["key"] == cal["key"]
    stored = json.loads((clean_runtime / runtime.CALIBRATION_FILE).read_text())
    assert stored[cal["key"]]["chosen"] == p.precision
    # a new process (memo cleared) reads the cache file instead of timing again
    runtime._CALIBRATION_MEMO.clear()
    p2 = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2 and p2.calibration["cached"] is True and p2.precision == p.precision


def test_cache_entry_decides_and_is_keyed_by_workload(clean_runtime, monkeypatch):
    monkeypatch.setenv("GLOMLIB_PRECISION_CALIBRATE", "1")
    calls: list = []
    w = tiny_workload(calls)
    key = runtime.calibration_key(torch.device("cpu"), w)
    for chosen in ("fp32", "bf16"):
        (clean_runtime / runtime.CALIBRATION_FILE).write_text(
            json.dumps({key: {"chosen": chosen, "speedup_bf16": 1.0}})
        )
        runtime._CALIBRATION_MEMO.clear()
        assert runtime.plan("cpu", "auto", workload=w).precision == chosen
    assert calls == []
    other = runtime.Workload("tiny-test-net", 32, 4, w.build)
    assert runtime.calibration_key(torch.device("cpu"), other) != key


def test_damaged_cache_is_retimed(clean_runtime, monkeypatch):
    monkeypatch.setenv("GLOMLIB_PRECISION_CALIBRATE", "1")
    (clean_runtime / runtime.CALIBRATION_FILE).write_text("{not json")
    calls: list = []
    p = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2 and p.calibration["cached"] is False
    assert json.loads((clean_runtime / runtime.CALIBRATION_FILE).read_text())


def test_unknown_capabilities_calibrate_by_default(clean_runtime, monkeypatch):
    def broken():
        raise RuntimeError("cannot query")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert runtime.cpu_capabilities()["known"] is False
    assert runtime.plan("cpu", "auto").precision == "fp32"  # without a workload: the safe choice
    calls: list = []
    p = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2 and p.calibration is not None


def test_explicit_precision_never_calibrates(clean_runtime, monkeypatch):
    monkeypatch.setenv("GLOMLIB_PRECISION_CALIBRATE", "1")
    calls: list = []
    for prec in ("fp32", "bf16"):
        p = runtime.plan("cpu", prec, workload=tiny_workload(calls))
        assert p.precision == prec and p.calibration is None
    assert calls == []


@pytest.mark.parametrize(
    "cap, capped",
    [
        ("AVX512_CORE", True),
        ("avx512_core_vnni", True),
        ("AVX2", True),
        ("AVX512_CORE_BF16", False),
        ("ALL", False),
        ("", False),
    ],
)
def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16(clean_runtime, monkeypatch, cap, capped):
    """ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16 leaves oneDNN without bf16 kernels (bf16 is then emulated and
    slow), so auto must not pick bf16 whatever the CPU has; that is also how a no-bf16 CPU is emulated."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    caps = runtime.cpu_capabilities()
    assert caps["isa_capped"] is capped
    p = runtime.plan("cpu", "auto")
    if capped:
        assert not caps["native_bf16"] and p.precision == "fp32" and p.channels_last
        assert "ONEDNN_MAX_CPU_ISA" in p.reason and cap.upper() in p.reason
    else:
        assert "ONEDNN_MAX_CPU_ISA" not in p.reason
    w = runtime.Workload("x", 16, 4, lambda: torch.nn.Conv2d(3, 4, 3))
    key = runtime.calibration_key(torch.device("cpu"), w)
    assert (f"onednn-isa={cap.upper()}" in key) is (cap.upper() not in ("", "ALL"))


def test_native_bf16_is_confirmed_per_workload_by_timing(clean_runtime, monkeypatch):
    """Native bf16 is necessary, not sufficient (depthwise convolutions can be slower in bf16): with a workload,
    a CPU with native bf16 times both modes; without native bf16, or with the calibration switched off, the rule
    decides alone."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    calls: list = []
    p = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2 and p.calibration is not None and "timed calibration" in p.reason
    assert p.precision == p.calibration["chosen"]
    assert runtime.plan("cpu", "auto").calibration is None  # no workload: the rule (bf16)
    monkeypatch.setenv("GLOMLIB_PRECISION_CALIBRATE", "0")
    runtime._CALIBRATION_MEMO.clear()
    p0 = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2 and p0.calibration is None and p0.precision == "bf16"
    monkeypatch.delenv("GLOMLIB_PRECISION_CALIBRATE")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    p1 = runtime.plan("cpu", "auto", workload=tiny_workload(calls))
    assert len(calls) == 2 and p1.calibration is None and p1.precision == "fp32"
