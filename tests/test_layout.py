"""The structure the code keeps: classes small enough to read, every server module naming its role."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_CLASS_LINES = 250
MAX_SERVER_CLASS_LINES = 150  # cim/server: one role per module, one small class per role


def classes(package: str) -> list[tuple[str, int]]:
    """(module:Class, lines) for every class defined anywhere under ``package``."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                found.append((f"{path.relative_to(ROOT)}:{node.name}", node.end_lineno - node.lineno + 1))
    return found


@pytest.mark.parametrize(("package", "limit"), [("cim", MAX_CLASS_LINES), ("cim/server", MAX_SERVER_CLASS_LINES)])
def test_no_class_is_over_the_limit(package: str, limit: int) -> None:
    assert [(name, lines) for name, lines in classes(package) if lines > limit] == []


def test_every_server_module_names_its_role() -> None:
    modules = [p for p in sorted((ROOT / "cim/server").glob("*.py")) if p.name != "__init__.py"]
    assert modules
    for path in modules:
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert docstring.startswith("Role:"), f"{path.name}: {docstring[:60]!r}"
