"""The linter and the type checker, as part of the suite: ``python -m pytest`` runs them.

Both read their configuration from pyproject.toml (``[tool.ruff]``, ``[tool.mypy]``);
``tox -e lint`` runs the same two commands alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_the_tree_passes(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=110)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} found problems:\n{result.stdout}{result.stderr}", pytrace=False)
