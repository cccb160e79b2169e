"""Shared pytest fixtures for the bitnet_train test suite."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels are tested on CPU through Triton's interpreter, which triton chooses when it is first
# imported (by anything: torch's compiler imports it too), so it is switched on here, before any test
# module loads. Not on CUDA machines: there torch.compile's own Triton kernels must run compiled, and
# the kernel's GPU test runs the compiled kernel.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


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
