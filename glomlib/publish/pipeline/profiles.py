"""Pipeline profiles (``glomlib/profiles/<name>.yaml`` or any YAML file) and which steps a run executes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from glomlib.core.config import PROFILES_DIR, ConfigError, list_profiles
from glomlib.publish.steps import PROFILE_KEYS, STEMS, SUBSET_KEYS, Step

DEFAULT_INITS = ("glom", "imagenet", "scratch")


def resolve_profile_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        candidate = PROFILES_DIR / f"{name_or_path}.yaml"
        if not candidate.exists():
            raise ConfigError(
                f"No profile named {str(name_or_path)!r}. Available: {list_profiles()}; or give a path to a YAML file."
            )
        return candidate
    if not p.exists():
        raise ConfigError(f"Profile file {p} does not exist.")
    return p


def _inits(p: Path, inits: Any) -> list[str]:
    inits = [inits] if isinstance(inits, str) else inits
    if not inits or not all(isinstance(i, str) and i for i in inits) or len(set(inits)) != len(inits):
        raise ConfigError(f"Profile {p}: 'inits' must be a non-empty list of distinct names, got {inits!r}.")
    return list(inits)


def _check_steps(p: Path, data: dict[str, Any]) -> None:
    if not isinstance(data["common"], dict) or not isinstance(data["steps"], dict):
        raise ConfigError(f"Profile {p}: 'common' and 'steps' must be mappings.")
    unknown_steps = sorted(set(data["steps"]) - set(STEMS))
    if unknown_steps:
        raise ConfigError(f"Profile {p}: unknown step(s) {unknown_steps} under 'steps'; steps are {list(STEMS)}.")
    for stem, params in data["steps"].items():
        if params is None:
            data["steps"][stem] = {}
        elif not isinstance(params, dict):
            raise ConfigError(f"Profile {p}: steps.{stem} must be a mapping of parameter: value.")
    subset = data.get("subset")
    if subset is not None and (not isinstance(subset, dict) or set(subset) - SUBSET_KEYS):
        raise ConfigError(f"Profile {p}: 'subset' must be a mapping with keys from {sorted(SUBSET_KEYS)}.")


def load_run_profile(name_or_path: str | Path) -> dict[str, Any]:
    """Load and check a pipeline profile (see :mod:`glomlib.publish.pipeline` for its keys)."""
    import yaml

    p = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Profile {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Profile {p} must be a mapping with 'common' and 'steps' keys.")
    bad = sorted(set(data) - PROFILE_KEYS)
    if bad:
        raise ConfigError(f"Profile {p}: unknown top-level key(s) {bad}; use {sorted(PROFILE_KEYS)}.")
    data.setdefault("name", p.stem)
    data["common"] = data.get("common") or {}
    data["steps"] = data.get("steps") or {}
    data["inits"] = _inits(p, data.get("inits", list(DEFAULT_INITS)))
    _check_steps(p, data)
    data["source"] = p.name
    return data


def errors_init(profile: dict[str, Any]) -> str:
    """The init whose fine-tune run notebook 05 analyses: glom when present, else the first one."""
    return "glom" if "glom" in profile["inits"] else profile["inits"][0]


def select_steps(steps: list[Step], only: Iterable[str] | None) -> list[Step]:
    if not only:
        return list(steps)
    chosen: list[Step] = []
    for token in only:
        tok = token.strip().removesuffix(".ipynb")
        hits = [s for s in steps if tok in s.aliases()]
        if not hits:
            valid = sorted({a for s in steps for a in s.aliases()})
            raise ConfigError(f"--only {token!r} matches no step of this run; use one of {valid}.")
        chosen += [h for h in hits if h not in chosen]
    return [s for s in steps if s in chosen]  # keep pipeline order
