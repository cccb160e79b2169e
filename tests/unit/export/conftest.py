"""Fixtures for export tests."""

from __future__ import annotations

import pytest
from exporttest_helpers import save_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    """make(model=..., quant=..., seed=...) -> path of a saved checkpoint."""
    def make(model=None, quant=None, seed=0, name="last.ckpt"):
        path = tmp_path / "run" / "checkpoints" / name
        save_checkpoint(path, model, quant, seed)
        return path
    return make
