"""One config object per step: the single source of its defaults, its notebook parameters and its command line.

Every step defines a frozen dataclass subclassing :class:`StepConfig`. Its fields, defaults and trailing
``# comments`` are the notebook's parameters cell (tests/test_defaults.py), the profiles' keys and the
``glomlib <step> --name value`` options: tyro builds the command line from the dataclass (help from the comments,
choices from ``Literal``); ranges are ``Annotated`` constraints (annotated-types) checked here, in one place, when
the config is made. A config is validated once, where it enters (CLI, notebook, profile, file), and never mutated:
derive another with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import annotated_types as at
import yaml

from glomlib.core.errors import ConfigError
from glomlib.core.io import write_text_atomic

T = TypeVar("T", bound="StepConfig")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROFILES_DIR = PACKAGE_DIR / "profiles"


def _unique(v: Any) -> bool:
    """no repeated values"""
    return len(set(v)) == len(list(v))


Unique = at.Predicate(_unique)
PositiveInt = Annotated[int, at.Ge(1)]
NonNegativeInt = Annotated[int, at.Ge(0)]
PositiveFloat = Annotated[float, at.Gt(0)]
NonNegativeFloat = Annotated[float, at.Ge(0)]
Fraction = Annotated[float, at.Gt(0), at.Le(1)]
Probability = Annotated[float, at.Ge(0), at.Le(1)]
Seeds = Annotated[list[int], at.MinLen(1), Unique]
Precision = Literal["auto", "bf16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]

_BOUNDS = {
    at.Gt: ("gt", ">", float.__gt__),
    at.Ge: ("ge", ">=", float.__ge__),
    at.Lt: ("lt", "<", float.__lt__),
    at.Le: ("le", "<=", float.__le__),
}


def _violation(name: str, value: Any, c: Any) -> str | None:
    """Why ``value`` breaks constraint ``c`` (an annotated-types object), or None."""
    if type(c) in _BOUNDS:
        attr, sym, op = _BOUNDS[type(c)]
        bound = getattr(c, attr)
        return None if op(float(value), float(bound)) else f"{name}={value!r} must be {sym} {bound}"
    if isinstance(c, at.MinLen) and len(value) < c.min_length:
        return f"{name}={value!r} must hold at least {c.min_length} value(s)"
    if isinstance(c, at.Predicate) and not c.func(value):
        return f"{name}={value!r}: {c.func.__doc__ or c.func.__name__}"
    return None


def _literal_choices(hint: Any) -> tuple | None:
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    return typing.get_args(base) if typing.get_origin(base) is Literal else None


def _coerce(hint: Any, value: Any) -> Any:
    """Shell- and papermill-friendly spellings of typed values: "0,1" or 0 for a list, "true" for a bool."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            value = [v.strip().strip("'\"") for v in value.strip("[]() ").split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [item(v) if item in (int, float, str) else v for v in value]
    if base is bool and isinstance(value, str):
        return parse_bool(value)
    if base in (int, float) and isinstance(value, str):
        return base(value)
    return value


def parse_bool(s: str | bool) -> bool:
    """``true/false`` (also yes/no, on/off, 1/0), case-insensitive."""
    if isinstance(s, bool):
        return s
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {s!r}")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Base for every step's configuration: constraints checked when made, never mutated."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self), include_extras=True)
        problems = []
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints.get(f.name)
            choices = _literal_choices(hint)
            if choices is not None and value not in choices:
                problems.append(f"{f.name}={value!r}: choose one of {list(choices)}")
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{f.name}={value!r} must be a finite number")
            for c in getattr(hint, "__metadata__", ()):
                why = _violation(f.name, value, c)
                if why:
                    problems.append(why)
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems) + ".")
        self.validate()

    def validate(self) -> None:
        """Checks across fields (overridden by steps that have them); must not change the config."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls: type[T], **params: Any) -> T:
        """From a mapping (notebook, profile, JSON): unknown names refused, shell spellings coerced."""
        known = set(cls.field_names())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown parameter(s) {unknown}. Known parameters: {sorted(known)}.")
        hints = typing.get_type_hints(cls, include_extras=True)
        try:
            return cls(**{k: _coerce(hints[k], v) for k, v in params.items()})
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{cls.__name__}: {e}") from None

    @classmethod
    def from_namespace(cls: type[T], namespace: dict[str, Any]) -> T:
        """Build from a notebook's globals(): picks the fields this config knows, ignores the rest."""
        return cls.from_params(**{k: namespace[k] for k in cls.field_names() if k in namespace})

    def _repr_markdown_(self) -> str:
        """How a notebook shows the config: the settings that differ from the defaults."""
        defaults = field_defaults(type(self))
        changed = [
            f"- `{k}` = `{v!r}` (default `{defaults.get(k)!r}`)"
            for k, v in self.to_dict().items()
            if k not in defaults or v != defaults[k]
        ]
        head = f"**{type(self).__name__}**: "
        if not changed:
            return head + "every setting at its default."
        return head + f"{len(changed)} setting(s) differ from the defaults:\n\n" + "\n".join(changed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON, atomically (a reader never sees half a file; a failed write keeps the old)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        return cls.from_params(**json.loads(Path(path).read_text()))


def field_defaults(cls: type) -> dict[str, Any]:
    """``{field name: default}`` of a config class (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_params_file(path: str | Path) -> dict[str, Any]:
    """A YAML/JSON file of ``name: value`` parameters (``--config FILE``, profiles)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file.")
    loaded = yaml.safe_load(p.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {p} must hold a mapping of parameter: value.")
    return loaded


def _tyro_registry():
    """tyro rules for the documented spellings: bools ``--flag true|false`` (bare ``--flag`` = true), lists
    comma-separated ``--seeds 0,1,2``."""
    from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

    registry = ConstructorRegistry()

    @registry.primitive_rule
    def _bool(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
        if info.type is not bool:
            return None
        return PrimitiveConstructorSpec(
            nargs=(0, 1),
            metavar="true|false",
            instance_from_str=lambda a: parse_bool(a[0]) if a else True,
            is_instance=lambda x: isinstance(x, bool),
            str_from_instance=lambda b: ["true" if b else "false"],
        )

    @registry.primitive_rule
    def _list(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
        if typing.get_origin(info.type) is not list:
            return None
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="A,B,...",
            instance_from_str=lambda a: _coerce(info.type, a[0]),
            is_instance=lambda x: isinstance(x, list),
            str_from_instance=lambda v: [",".join(map(str, v))],
        )

    return registry


def parse_args(cls: type[T], argv: list[str], prog: str, description: str | None = None) -> T:
    """The config of ``cls`` from ``--name value`` options (tyro; help from the fields' comments), after
    ``--config FILE`` (YAML/JSON ``name: value``), whose values the command line overrides. A usage error
    prints the reason and exits 2; ``--help`` exits 0."""
    import tyro

    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a FILE.")
        argv = _as_options(load_params_file(argv[i + 1])) + argv[:i] + argv[i + 2 :]
    with _tyro_registry():
        return tyro.cli(
            cls,
            args=argv,
            prog=prog,
            description=description or (cls.__doc__ or "").strip(),
            config=(tyro.conf.FlagConversionOff,),
        )


def _as_options(params: dict[str, Any]) -> list[str]:
    out = []
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def budget_value(budget: float | str) -> float:
    """A label budget as one number: a share of the training labels in (0, 1] (``0.05``, ``"10%"``) as itself,
    ``"N/class"`` (N labels per class) as ``-N``, so every reader of a ``label_fraction`` column keeps working."""
    s = str(budget).strip().replace(" ", "")
    if s.endswith("/class"):
        n = float(s[: -len("/class")])
        if n < 1 or n != int(n):
            raise ValueError(f"label budget {budget!r}: N/class needs a whole N >= 1")
        return -n
    v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    if not 0 < v <= 1:
        raise ValueError(f"label budget {budget!r}: a share must be in (0, 1], or spell N labels per class 'N/class'")
    return v


def budget_name(value: float) -> str:
    """``-4`` -> ``"4/class"``, ``0.1`` -> ``"10%"`` (fold folders and the ``budget`` column)."""
    v = float(value)
    return f"{int(-v)}/class" if v < 0 else f"{100 * v:g}%"
