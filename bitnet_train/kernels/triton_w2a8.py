"""Triton W2A8 ternary matmul: int8 activations times 2-bit ternary weights, int32 accumulation.

The weight is packed along K (kernels/packing.py, `pack_k2`): byte [n, j] holds the codes
c = q + 1 of columns j + i * K4, i = 0..3. A program loads a [rows, BLOCK_J] tile of bytes once and
unpacks it in registers with shifts into four K-slices, each multiplied with its own contiguous
slice of activations. The +1 code offset is folded out exactly: sum_k x_k (c_k - 1) =
sum_k x_k c_k - sum_k x_k, so codes are used as they are (0, 1, 2).

Two kernels, after gemlite's split (docs/METHODS.md#triton-w2a8-kernel):
- M = 1 (decoding one token): a GEMV over [BLOCK_N, BLOCK_J] tiles with a broadcast multiply and
  row sums; split-K over a second grid axis when N alone gives too few programs, the int32
  partial sums then meet through integer atomics (exact and order-independent) and the scales are
  applied afterwards by the same epilogue as the reference.
- M > 1: a tiled GEMM with `tl.dot` on int8 x int8 -> int32.
Epilogue: y = (float(acc) * a[m]) * w with a the per-token activation multiplier and w the
weight scale, the reference's arithmetic (kernels/reference.py).

Block sizes are checked against what a GPU compiles (powers of two, `tl.dot` dimensions of at
least 16, 32 along K for int8, at most 2^20 elements per tile), because Triton's CPU interpreter
(TRITON_INTERPRET=1, used by the tests) accepts sizes a GPU rejects.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
import torch

from bitnet_train.kernels.reference import epilogue

MAX_TILE_ELEMENTS = 1 << 20  # Triton's limit on the elements of one block tensor


@triton.jit
def _w2a8_gemv_kernel(x_ptr, xm_ptr, w_ptr, ws_ptr, out_ptr, acc_ptr, N, K, K4, stride_wn, j_per_split,
                      BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, SPLIT_K: tl.constexpr, INT_OUT: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.int32)
    xsum = tl.zeros((BLOCK_J,), dtype=tl.int32)
    j_begin = pid_k * j_per_split
    for j0 in range(j_begin, j_begin + j_per_split, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        j_mask = rj < K4
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rj[None, :],
                    mask=n_mask[:, None] & j_mask[None, :], other=0)
        for i in tl.static_range(4):
            kk = rj + i * K4
            xv = tl.load(x_ptr + kk, mask=j_mask & (kk < K), other=0).to(tl.int32)
            codes = ((w >> (2 * i)) & 3).to(tl.int32)
            acc += tl.sum(codes * xv[None, :], axis=1)
            xsum += xv
    acc -= tl.sum(xsum, axis=0)
    if SPLIT_K > 1:
        tl.atomic_add(acc_ptr + rn, acc, mask=n_mask)
    elif INT_OUT:
        tl.store(out_ptr + rn, acc, mask=n_mask)
    else:
        a = tl.load(xm_ptr)
        ws = tl.load(ws_ptr)
        y = (acc.to(tl.float32) * a) * ws
        tl.store(out_ptr + rn, y.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _w2a8_gemm_kernel(x_ptr, xm_ptr, w_ptr, ws_ptr, out_ptr, M, N, K, K4, stride_xm, stride_wn, stride_om,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, INT_OUT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    xsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for j0 in range(0, K4, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        j_mask = rj < K4
        w = tl.load(w_ptr + rn[None, :] * stride_wn + rj[:, None],
                    mask=j_mask[:, None] & n_mask[None, :], other=0)  # [BLOCK_J, BLOCK_N] bytes
        for i in tl.static_range(4):
            kk = rj + i * K4
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=m_mask[:, None] & (j_mask & (kk < K))[None, :], other=0)  # int8 [BLOCK_M, BLOCK_J]
            codes = ((w >> (2 * i)) & 3).to(tl.int8)
            acc = tl.dot(x, codes, acc, out_dtype=tl.int32)
            xsum += tl.sum(x.to(tl.int32), axis=1)
    acc -= xsum[:, None]
    out_offsets = rm[:, None] * stride_om + rn[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if INT_OUT:
        tl.store(out_ptr + out_offsets, acc, mask=out_mask)
    else:
        a = tl.load(xm_ptr + rm, mask=m_mask, other=0.0)
        ws = tl.load(ws_ptr)
        y = (acc.to(tl.float32) * a[:, None]) * ws
        tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=out_mask)


def _power_of_two(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two >= {minimum} (what a GPU compiles)")


def check_gemv_blocks(block_n: int, block_j: int) -> None:
    _power_of_two("block_n", block_n)
    _power_of_two("block_j", block_j)
    if block_n * block_j > MAX_TILE_ELEMENTS:
        raise ValueError(f"block_n * block_j = {block_n * block_j} exceeds Triton's {MAX_TILE_ELEMENTS} elements")


def check_gemm_blocks(block_m: int, block_n: int, block_j: int) -> None:
    _power_of_two("block_m", block_m, 16)  # tl.dot needs every dimension >= 16 ...
    _power_of_two("block_n", block_n, 16)
    _power_of_two("block_j", block_j, 32)  # ... and K >= 32 for int8 operands
    for name, size in (("block_m * block_n", block_m * block_n), ("block_m * block_j", block_m * block_j),
                       ("block_j * block_n", block_j * block_n)):
        if size > MAX_TILE_ELEMENTS:
            raise ValueError(f"{name} = {size} exceeds Triton's {MAX_TILE_ELEMENTS} elements")


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: one program after the other


def _check_inputs(x_codes: torch.Tensor, x_mult: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, k: int) -> None:
    if x_codes.dtype != torch.int8 or x_codes.ndim != 2:
        raise ValueError(f"x_codes must be int8 [M, K], got {x_codes.dtype} {tuple(x_codes.shape)}")
    if packed.dtype != torch.uint8 or packed.ndim != 2 or packed.shape[1] != -(-k // 4):
        raise ValueError(f"packed must be uint8 [N, ceil(K/4)] for K={k}, got {packed.dtype} {tuple(packed.shape)}")
    if x_codes.shape[1] != k:
        raise ValueError(f"x_codes has {x_codes.shape[1]} columns, the weight {k}")
    if x_mult.shape != (x_codes.shape[0],) or x_mult.dtype != torch.float32:
        raise ValueError(f"x_mult must be float32 [M], got {x_mult.dtype} {tuple(x_mult.shape)}")
    if w_scale.numel() != 1 or w_scale.dtype != torch.float32:
        raise ValueError("w_scale must be a float32 tensor with one element")
    devices = {t.device for t in (x_codes, x_mult, packed, w_scale)}
    if len(devices) != 1:
        raise ValueError(f"inputs are on different devices: {sorted(map(str, devices))}")


def ternary_matmul_triton(x_codes: torch.Tensor, x_mult: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                          k: int, out_dtype: torch.dtype = torch.float32, *, int_out: bool = False,
                          block_m: int | None = None, block_n: int | None = None, block_j: int | None = None,
                          split_k: int | None = None) -> torch.Tensor:
    """[M, N] = epilogue(X @ q^T) (or the int32 accumulators with int_out=True); see module docstring."""
    _check_inputs(x_codes, x_mult, packed, w_scale, k)
    x_codes, packed = x_codes.contiguous(), packed.contiguous()
    m, n, k4 = x_codes.shape[0], packed.shape[0], packed.shape[1]
    device = x_codes.device
    out = torch.empty(m, n, device=device, dtype=torch.int32 if int_out else out_dtype)
    if m == 0 or n == 0:
        return out
    if m == 1:
        block_n = block_n or 32
        block_j = block_j or 128
        check_gemv_blocks(block_n, block_j)
        n_blocks = triton.cdiv(n, block_n)
        j_blocks = triton.cdiv(k4, block_j)
        if split_k is None:  # enough programs to fill the GPU twice over
            split_k = max(1, min(j_blocks, triton.cdiv(2 * _num_sms(device), n_blocks)))
        if split_k < 1:
            raise ValueError(f"split_k={split_k} must be >= 1")
        split_k = min(split_k, j_blocks)
        j_per_split = triton.cdiv(j_blocks, split_k) * block_j
        split_k = triton.cdiv(k4, j_per_split)
        acc = torch.zeros(n, device=device, dtype=torch.int32) if split_k > 1 else out
        _w2a8_gemv_kernel[(n_blocks, split_k)](
            x_codes, x_mult, packed, w_scale, out, acc, n, k, k4, packed.stride(0), j_per_split,
            BLOCK_N=block_n, BLOCK_J=block_j, SPLIT_K=split_k, INT_OUT=int_out)
        if split_k > 1:
            return acc[None].clone() if int_out else epilogue(acc[None], x_mult, w_scale, out_dtype)
        return out
    block_m = block_m or (16 if m <= 16 else 32 if m <= 32 else 64)
    block_n = block_n or 64
    block_j = block_j or 64
    check_gemm_blocks(block_m, block_n, block_j)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _w2a8_gemm_kernel[grid](
        x_codes, x_mult, packed, w_scale, out, m, n, k, k4, x_codes.stride(0), packed.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_J=block_j, INT_OUT=int_out)
    return out
