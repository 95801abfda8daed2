"""One config object per step: the single source of its defaults, its notebook parameters and its CLI.

Every step module defines a dataclass that subclasses :class:`StepConfig`; its fields (with their defaults
and trailing ``# comment``) are exactly the notebook's parameters cell (tests/test_defaults.py compares
names and values); profiles only override them. ``Config.from_params(**kw)`` rejects unknown names with a
clear message, so a typo in ``papermill -p`` or in a profile fails loudly instead of being ignored.
:func:`add_config_arguments` / :func:`config_from_args` turn the same dataclass into ``glomlib <step>
--name value`` options, help text from each field's comment.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from glomlib.core.errors import ConfigError
from glomlib.core.io import write_text_atomic

T = TypeVar("T", bound="StepConfig")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROFILES_DIR = PACKAGE_DIR / "profiles"


@dataclasses.dataclass
class StepConfig:
    """Base for every step's configuration."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls: type[T], **params: Any) -> T:
        known = set(cls.field_names())
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown parameter(s) {unknown}. Known parameters: {sorted(known)}."
            )
        cfg = cls(**params)
        cfg.validate()
        return cfg

    @classmethod
    def from_namespace(cls: type[T], namespace: dict[str, Any]) -> T:
        """Build from a notebook's globals(): picks the fields this config knows, ignores the rest."""
        return cls.from_params(**{k: namespace[k] for k in cls.field_names() if k in namespace})

    def validate(self) -> None:  # overridden by steps that have constraints
        return None

    def _repr_markdown_(self) -> str:
        """How a notebook (and its HTML report) shows the config: the settings that differ from the defaults, as a
        readable list, instead of the dataclass's one-line repr."""
        changed = []
        for f in dataclasses.fields(self):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            value = getattr(self, f.name)
            if value != default:
                changed.append(f"- `{f.name}` = `{value!r}` (default `{default!r}`)")
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


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


# ------------------------------------------------------------------------------------------------ CLI
CONFIG_FILE_DEST = "_config_file"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _annotation(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")


def field_defaults(cls: type[StepConfig]) -> dict[str, Any]:
    """``{field name: default}`` of a config class (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        d = _default(f)
        if d is not dataclasses.MISSING:
            out[f.name] = d
    return out


def field_help(cls: type) -> dict[str, str]:
    """``{field name: help}``: ``field(metadata={"help": ...})`` or else the ``# comment`` ending the field's
    line in the class source (read with ``tokenize``); "" when a field has neither."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        src = textwrap.dedent("".join(lines))
        by_line: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                by_line[tok.start[0]] = tok.string.lstrip("#").strip()
        cls_node = ast.parse(src).body[0]
        for node in getattr(cls_node, "body", []):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = by_line.get(node.end_lineno or node.lineno, "")
                if text:
                    comments[node.target.id] = text
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = str(f.metadata.get("help", "")) or comments.get(f.name, "")
    return out


def parse_bool(s: str | bool) -> bool:
    """``true/false`` (also yes/no, on/off, 1/0), case-insensitive."""
    if isinstance(s, bool):
        return s
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _list_parser(example: list) -> Callable[[str], list]:
    conv: Callable[[str], Any] = type(example[0]) if example and type(example[0]) in (int, float, str) else str

    def parse(s: str) -> list:
        items = [x.strip().strip("'\"") for x in s.strip().strip("[]()").split(",")]
        try:
            return [conv(x) for x in items if x]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {conv.__name__}, got {s!r}") from None
    return parse


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, str) and v == "":
        return '""'
    return str(v)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[StepConfig]) -> argparse.ArgumentParser:
    """One ``--name value`` option per field of ``cls`` (``_`` written ``-``), its help the field's comment and
    default. Lists are comma-separated (``--seeds 0,1,2``), bools ``true``/``false`` (a bare ``--resume`` means
    true); a field without a default is a required option. Options not given keep the dataclass default."""
    helps = field_help(cls)
    required = [f"--{f.name.replace('_', '-')} {f.name.upper()}" for f in dataclasses.fields(cls)
                if _default(f) is dataclasses.MISSING]
    if parser.usage is None:  # the generated usage line would list every option; the list follows below
        parser.usage = " ".join(["%(prog)s", *required, "[--name value ...]"])
    for f in dataclasses.fields(cls):
        default = _default(f)
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        text = helps.get(f.name, "")
        if default is dataclasses.MISSING:
            kw["required"] = True
        elif isinstance(default, bool):
            kw.update(type=parse_bool, nargs="?", const=True, metavar="true|false")
        elif isinstance(default, list):
            kw.update(type=_list_parser(default), metavar="A,B,...")
        elif isinstance(default, (int, float)):
            typ = float if _annotation(f) == "float" else type(default)  # `x: float = 1` takes 0.5 too
            kw.update(type=typ, metavar=typ.__name__.upper())
        else:
            kw.update(type=str, metavar="TEXT")
        shown = "required" if default is dataclasses.MISSING else f"default: {_fmt(default)}"
        kw["help"] = (f"{text} ({shown})" if text else f"({shown})").replace("%", "%%")  # argparse %-formats help
        parser.add_argument(flag, **kw)
    if "config" not in {f.name for f in dataclasses.fields(cls)}:
        parser.add_argument("--config", dest=CONFIG_FILE_DEST, default=argparse.SUPPRESS, metavar="FILE",
                            help="YAML/JSON file of parameters (name: value); options on the command line win")
    return parser


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config of ``cls`` from parsed options: defaults, then ``--config FILE``, then the options given."""
    given = vars(args)
    params: dict[str, Any] = {}
    if given.get(CONFIG_FILE_DEST):
        path = Path(given[CONFIG_FILE_DEST])
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path} must hold a mapping of parameter: value.")
        params.update(loaded)
    params.update({f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})
    return cls.from_params(**params)
