"""Every module under glomlib/ opens with a docstring whose first line says, briefly, what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "glomlib"
MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_opens_with_a_one_line_summary(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path.relative_to(PKG.parent)}: add a module docstring saying what the module is for"
    first = doc.splitlines()[0].strip()
    assert first and len(first) <= 120, f"{path.relative_to(PKG.parent)}: first docstring line empty or too long"
    assert first.endswith((".", ":", "?")), (
        f"{path.relative_to(PKG.parent)}: the first line should be a complete sentence: {first!r}"
    )
