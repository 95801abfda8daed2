"""environment.yml (for conda users) must list the same dependencies as pyproject.toml (the source of truth)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, f"cannot parse requirement {req!r}"
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_norm(r) for r in pp["dependencies"] + pp["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert conda_py == ["python=3.11"], "environment.yml must pin python=3.11 like README says"
    got = dict(_norm(r) for r in pip_section if not r.startswith("-e"))
    assert "-e ." in pip_section, "environment.yml must install glomlib itself (-e .)"
    missing = {k: v for k, v in wanted.items() if k not in got}
    extra = {k: v for k, v in got.items() if k not in wanted}
    differ = {k: (wanted[k], got[k]) for k in wanted.keys() & got.keys() if wanted[k] != got[k]}
    assert not missing and not extra and not differ, (
        f"environment.yml and pyproject.toml disagree: missing={missing} extra={extra} differ={differ}"
    )
