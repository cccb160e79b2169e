"""Load a script from tools/ as a module (tools/ is not a package and exists only in a checkout)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[3] / "tools"


@pytest.fixture
def load_tool():
    def load(name: str):
        path = TOOLS / f"{name}.py"
        if not path.is_file():
            pytest.skip("tools/ exists only in a checkout")
        spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
