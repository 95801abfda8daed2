"""The typed-config command line (tyro): documented spellings, constraints checked in one place, --config FILE."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import pytest

from glomlib.core.config import (
    ConfigError,
    Fraction,
    PositiveFloat,
    PositiveInt,
    Seeds,
    StepConfig,
    field_defaults,
    parse_args,
)


@dataclasses.dataclass(frozen=True)
class _Demo(StepConfig):
    name: str = "x"  # a name
    n: PositiveInt = 3  # a count
    rate: PositiveFloat = 0.5  # a rate
    flag: bool = False  # a switch
    seeds: Seeds = dataclasses.field(default_factory=lambda: [0])  # seeds
    fracs: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0])  # fractions
    share: Fraction = 1.0  # 100% of it
    mode: Literal["a", "b"] = "a"  # which mode

    def validate(self) -> None:
        if self.mode == "b" and self.flag:
            raise ConfigError("mode=b cannot be combined with flag=true.")


def _parse(*argv: str) -> _Demo:
    return parse_args(_Demo, list(argv), prog="glomlib demo")


def test_documented_spellings_lists_bools_and_defaults():
    assert _parse() == _Demo()
    cfg = _parse("--name", "y", "--n", "7", "--rate", "1e-3", "--flag", "--seeds", "0,1,2", "--fracs", "0.1,1")
    assert (cfg.name, cfg.n, cfg.rate, cfg.flag, cfg.seeds, cfg.fracs) == ("y", 7, 1e-3, True, [0, 1, 2], [0.1, 1.0])
    assert _parse("--flag", "false").flag is False and _parse("--flag", "TRUE").flag is True
    assert _parse("--share", "0.25").share == 0.25


@pytest.mark.parametrize(
    "argv",
    [
        ["--flag", "maybe"],
        ["--n", "1.5"],
        ["--seeds", "a,b"],
        ["--unknown", "1"],
        ["--n", "0"],
        ["--rate", "nan"],
        ["--rate", "-1"],
        ["--seeds", "0,0"],
        ["--share", "1.5"],
        ["--mode", "c"],
        ["--mode", "b", "--flag"],
    ],
)
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(*argv)
    assert e.value.code == 2


def test_constraints_hold_wherever_a_config_is_made():
    for bad in ({"n": 0}, {"rate": math.nan}, {"seeds": [1, 1]}, {"seeds": []}, {"mode": "z"}, {"nope": 1}):
        with pytest.raises(ConfigError):
            _Demo.from_params(**bad)
    assert _Demo.from_params(seeds="0,1", flag="true").seeds == [0, 1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Demo().n = 5  # never mutated: derive with dataclasses.replace
    with pytest.raises(ConfigError):
        dataclasses.replace(_Demo(), n=-1)


def test_help_comes_from_field_comments(capsys):
    with pytest.raises(SystemExit) as e:
        _parse("--help")
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a count" in text and "--fracs" in text and "0.5,1.0" in text and "100% of it" in text


def test_config_file_then_command_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("n: 5\nseeds: [1, 2]\nflag: true\n")
    cfg = _parse("--config", str(f), "--n", "9")
    assert (cfg.n, cfg.seeds, cfg.flag) == (9, [1, 2], True)
    with pytest.raises(ConfigError):
        _parse("--config", str(tmp_path / "missing.yaml"))


def test_field_defaults():
    assert field_defaults(_Demo)["fracs"] == [0.5, 1.0]
