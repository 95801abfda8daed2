"""One config object per step, filled from a notebook's ``parameters`` cell or a profile.

Every step module defines a dataclass that subclasses :class:`StepConfig`; its fields are exactly the
notebook's parameters. ``Config.from_params(**kw)`` rejects unknown names with a clear message, so a
typo in ``papermill -p`` or in a profile fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="StepConfig")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROFILES_DIR = PACKAGE_DIR / "profiles"


class ConfigError(ValueError):
    """A parameter or profile is wrong; the message says which one and what to do."""


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        return cls.from_params(**json.loads(Path(path).read_text()))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
