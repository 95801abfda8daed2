"""glomlib.core.config (one config object per step, strict parameters) and glomlib.core.io (run folders, provenance)."""

import dataclasses
import json

import pytest

from glomlib.core.config import ConfigError, StepConfig
from glomlib.core.io import ensure_new_dir, new_run_dir, write_json_atomic, write_provenance


@dataclasses.dataclass(frozen=True)
class _Cfg(StepConfig):
    data: str = "m.csv"
    epochs: int = 3

    def validate(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


def test_unknown_parameter_is_named():
    with pytest.raises(ConfigError, match="epocs"):
        _Cfg.from_params(epocs=3)


def test_validate_runs_and_roundtrip(tmp_path):
    with pytest.raises(ConfigError, match="epochs must be"):
        _Cfg.from_params(epochs=0)
    cfg = _Cfg.from_namespace({"epochs": 7, "unrelated": 1, "data": "x.csv"})
    assert cfg.epochs == 7 and cfg.data == "x.csv"
    p = cfg.save(tmp_path / "config.json")
    assert _Cfg.load(p) == cfg


def test_new_run_dir_never_reuses(tmp_path):
    a = new_run_dir(tmp_path, "ssl")
    b = new_run_dir(tmp_path, "ssl")
    assert a != b and a.is_dir() and b.is_dir()


def test_ensure_new_dir_refuses_nonempty(tmp_path):
    d = ensure_new_dir(tmp_path / "out")
    (d / "result.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_new_dir(d)
    assert (d / "result.txt").read_text() == "precious"


def test_provenance_records_config_versions_fingerprint(tmp_path):
    write_provenance(tmp_path, _Cfg(), data_fingerprint="abc123")
    rec = json.loads((tmp_path / "provenance.json").read_text())
    assert rec["config"] == {"data": "m.csv", "epochs": 3}
    assert rec["data_fingerprint"] == "abc123"
    assert rec["versions"]["torch"] and rec["versions"]["python"]
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*tmp*"))
