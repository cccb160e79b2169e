"""Kernel tests run the Triton kernels on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported; tests/conftest.py does it on machines
without CUDA. Elsewhere (a CUDA machine, or TRITON_INTERPRET=0) these tests skip and the GPU test
checks the compiled kernel."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def triton_kernel():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off in this process (CUDA machine or TRITON_INTERPRET unset); "
                    "the compiled kernel is checked by test_compiled_kernel_on_gpu_equals_reference")
    from bitnet_train.kernels import triton_w2a8

    return triton_w2a8
