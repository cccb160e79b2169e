"""Kernel tests run the Triton kernels on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before the kernel module is first imported (triton.jit decides at
decoration time); nothing imports it at collection time (dispatch imports it lazily)."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def triton_kernel():
    pytest.importorskip("triton")
    if "bitnet_train.kernels.triton_w2a8" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel module was imported without TRITON_INTERPRET=1")
    from bitnet_train.kernels import triton_w2a8

    return triton_w2a8
