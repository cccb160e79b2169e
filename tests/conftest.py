"""Shared pytest fixtures for the bitnet_train test suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def dynamo_disabled(monkeypatch):
    """Run transformers' `@torch.compile`-decorated BitNet code (WeightQuant, ActQuant, AutoBitLinear) eagerly.

    On CPU their first call would compile with inductor (tens of seconds to minutes). Scoped to the
    test: the env var covers decoration at import time, the dynamo flag covers functions already
    decorated; both are restored afterwards, so tests of our own torch.compile support are unaffected.
    """
    import torch._dynamo

    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    with torch._dynamo.config.patch(disable=True):
        yield
