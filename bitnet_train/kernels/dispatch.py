"""Pick the ternary matmul implementation: the Triton kernel on CUDA tensors, the torch reference elsewhere.

`backend="auto"` uses Triton when the inputs are on a CUDA device and Triton is importable, and
the reference otherwise (CPU, or no Triton). `backend="triton"` insists (on CPU tensors only under
Triton's interpreter, TRITON_INTERPRET=1 set before the first import of the kernel module);
`backend="torch"` always takes the reference. The Triton module is imported on first use only.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from bitnet_train.kernels.reference import ternary_matmul_reference

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'triton' or 'torch' for tensors on `device`, or ValueError naming what is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    usable = triton_available() and (device.type == "cuda" or interpreter_enabled())
    if backend == "auto":
        return "triton" if usable and device.type == "cuda" else "torch"
    if not usable:
        why = ("triton is not installed (pip install 'bitnet_train[kernels]')" if not triton_available()
               else f"tensors are on {device.type}; Triton needs CUDA or TRITON_INTERPRET=1")
        raise ValueError(f"backend='triton' cannot run: {why}")
    return "triton"


def ternary_matmul(x_codes: torch.Tensor, x_mult: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                   k: int, out_dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """(X @ q^T) * a[m] * w, [M, N] in out_dtype (kernels/reference.py defines it exactly)."""
    if resolve_backend(backend, x_codes.device) == "triton":
        from bitnet_train.kernels.triton_w2a8 import ternary_matmul_triton

        return ternary_matmul_triton(x_codes, x_mult, packed, w_scale, k, out_dtype)
    return ternary_matmul_reference(x_codes, x_mult, packed, w_scale, k, out_dtype)
