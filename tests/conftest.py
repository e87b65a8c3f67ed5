"""Shared fixtures: the codec twins and, for system tests, real services."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

CODEC_MODULES = ["cim._frame_py", "cim._frame"]


@pytest.fixture(scope="session", params=CODEC_MODULES, ids=["python", "cython"])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """Each codec implementation in turn: one suite, both twins."""
    name: str = request.param
    try:
        return importlib.import_module(name)
    except ImportError:
        if name == "cim._frame" and os.environ.get("CIM_NO_EXTENSIONS"):
            pytest.skip("built without the extension (CIM_NO_EXTENSIONS set)")
        raise
