"""The W2A8 ternary matmul in plain torch: the definition the Triton kernel is tested against.

Inputs: activation codes X [M, K] (int8, per-token quantized), their per-token dequantization
multipliers a [M] (fp32, x ~= X * a), the ternary weight packed along K (kernels/packing.py,
`pack_k2`) and its scale w (fp32, W = q * w). Output:

    acc[m, n] = sum_k X[m, k] * q[n, k]              (exact, int32)
    y[m, n]   = (float(acc[m, n]) * a[m]) * w         (fp32, two roundings, this order)

The kernel computes the same epilogue with the same two multiplications, so the float outputs
agree bit for bit wherever the int32 accumulators do.
"""

from __future__ import annotations

import torch

from bitnet_train.kernels.packing import unpack_k2


def int_matmul(x_codes: torch.Tensor, w_codes_t: torch.Tensor) -> torch.Tensor:
    """Exact int32 X [M, K] @ Wt [K, N] of int8 operands.

    CPU: torch._int_mm (int8 x int8 -> int32). Elsewhere: a float64 matmul of the integer values,
    exact because every partial sum is an integer of magnitude <= 128 * K, far below 2^53."""
    if x_codes.device.type == "cpu":
        return torch._int_mm(x_codes.contiguous(), w_codes_t.contiguous())
    return (x_codes.double() @ w_codes_t.double()).to(torch.int32)


def epilogue(acc: torch.Tensor, x_mult: torch.Tensor, w_scale: torch.Tensor,
             out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(float(acc) * a[m]) * w, cast to out_dtype."""
    return ((acc.float() * x_mult.float()[:, None]) * w_scale.float()).to(out_dtype)


def ternary_matmul_int32_reference(x_codes: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """int32 [M, N] = X @ q^T from the packed weight (see module docstring)."""
    return int_matmul(x_codes, unpack_k2(packed, k).t())


def ternary_matmul_reference(x_codes: torch.Tensor, x_mult: torch.Tensor, packed: torch.Tensor,
                             w_scale: torch.Tensor, k: int, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[M, N] in out_dtype: the full W2A8 product with its scales."""
    return epilogue(ternary_matmul_int32_reference(x_codes, packed, k), x_mult, w_scale, out_dtype)
