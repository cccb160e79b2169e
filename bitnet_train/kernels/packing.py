"""Bit layouts of ternary weight matrices: what the kernels read and what the export formats store.

A ternary matrix W [N, K] (N outputs, K inputs, values q in {-1, 0, 1}) is stored as codes c = q + 1.

- `pack_k2` (kernel layout, 2 bits, 4 codes per byte, packed along K): with K4 = ceil(K / 4),
  byte [n, j] holds the codes of columns j + i * K4 at bits 2i..2i+1 (i = 0..3). Every one of the
  four bit fields of a row of bytes is a contiguous run of columns, so a kernel that loads bytes
  j0..j0+B of a row unpacks them into four contiguous K-slices with shifts only. Columns past K
  are padding with code 1 (q = 0). 2 bits per weight.
- `pack_k3` (storage layout, base 3, 5 codes per byte): with K5 = ceil(K / 5), byte [n, j] is
  sum_i c(j + i * K5) * 3^i (i = 0..4), at most 242. 1.6 bits per weight (the floor is log2 3 = 1.585).
  Loading repacks it to `pack_k2` once.
- `pack_hf` (transformers' BitNet layout, packed along N): byte [r, k] holds the codes of rows
  r + i * N/4 at bits 2i (N must be a multiple of 4); this is `transformers.integrations.bitnet.pack_weights`
  without its in-place edit of the input.

Every `unpack_*` inverts its `pack_*` exactly and returns int8 values in {-1, 0, 1}.
"""

from __future__ import annotations

import torch

CODES_PER_BYTE_2BIT = 4
CODES_PER_BYTE_BASE3 = 5


def _check_ternary(q: torch.Tensor) -> None:
    if q.ndim != 2:
        raise ValueError(f"expected a 2-D ternary matrix, got shape {tuple(q.shape)}")
    if q.numel() and (q.min() < -1 or q.max() > 1):
        raise ValueError("ternary matrix holds values outside {-1, 0, 1}")


def _padded_codes(q: torch.Tensor, per_byte: int) -> tuple[torch.Tensor, int]:
    """Codes [N, per_byte, Kp] (field i = columns i*Kp .. (i+1)*Kp - 1), padding code 1."""
    n, k = q.shape
    kp = -(-k // per_byte)
    codes = torch.ones(n, per_byte * kp, dtype=torch.uint8, device=q.device)
    codes[:, :k] = (q.to(torch.int16) + 1).to(torch.uint8)
    return codes.view(n, per_byte, kp), kp


def pack_k2(q: torch.Tensor) -> torch.Tensor:
    """Ternary [N, K] -> uint8 [N, ceil(K/4)], the kernel layout (see module docstring)."""
    _check_ternary(q)
    codes, _ = _padded_codes(q, CODES_PER_BYTE_2BIT)
    packed = codes[:, 0].clone()
    for i in range(1, CODES_PER_BYTE_2BIT):
        packed |= codes[:, i] << (2 * i)
    return packed


def unpack_k2(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, ceil(K/4)] -> int8 [N, K] in {-1, 0, 1}."""
    n, k4 = packed.shape
    if k4 != -(-k // CODES_PER_BYTE_2BIT):
        raise ValueError(f"packed shape {tuple(packed.shape)} does not hold K={k} columns (needs {-(-k // 4)} bytes)")
    fields = [((packed >> (2 * i)) & 3) for i in range(CODES_PER_BYTE_2BIT)]
    return (torch.cat(fields, dim=1)[:, :k].to(torch.int8) - 1)


def k2_invalid_codes(packed: torch.Tensor) -> bool:
    """True if any 2-bit field holds code 3 (no ternary value maps to it: the data is corrupt)."""
    return any(bool((((packed >> (2 * i)) & 3) == 3).any()) for i in range(CODES_PER_BYTE_2BIT))


def pack_k3(q: torch.Tensor) -> torch.Tensor:
    """Ternary [N, K] -> uint8 [N, ceil(K/5)], base 3 (see module docstring)."""
    _check_ternary(q)
    codes, _ = _padded_codes(q, CODES_PER_BYTE_BASE3)
    packed = torch.zeros_like(codes[:, 0], dtype=torch.int16)
    for i in reversed(range(CODES_PER_BYTE_BASE3)):
        packed = packed * 3 + codes[:, i].to(torch.int16)
    return packed.to(torch.uint8)


def unpack_k3(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, ceil(K/5)] -> int8 [N, K] in {-1, 0, 1}."""
    n, k5 = packed.shape
    if k5 != -(-k // CODES_PER_BYTE_BASE3):
        raise ValueError(f"packed shape {tuple(packed.shape)} does not hold K={k} columns (needs {-(-k // 5)} bytes)")
    rest = packed.to(torch.int16)
    fields = []
    for _ in range(CODES_PER_BYTE_BASE3):
        fields.append(rest % 3)
        rest = rest // 3
    return (torch.cat(fields, dim=1)[:, :k].to(torch.int8) - 1)


def k3_invalid_codes(packed: torch.Tensor) -> bool:
    """True if a byte exceeds 3^5 - 1 = 242 (not a base-3 group of five codes)."""
    return bool((packed > 242).any())


def pack_hf(q: torch.Tensor) -> torch.Tensor:
    """Ternary [N, K] -> uint8 [N/4, K], transformers' BitNet layout (packed along N)."""
    _check_ternary(q)
    n, k = q.shape
    if n % 4:
        raise ValueError(f"transformers' BitNet layout needs out_features divisible by 4, got {n}")
    codes = (q.to(torch.int16) + 1).to(torch.uint8).view(4, n // 4, k)
    packed = codes[0].clone()
    for i in range(1, 4):
        packed |= codes[i] << (2 * i)
    return packed


def unpack_hf(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N/4, K] -> int8 [N, K] in {-1, 0, 1}."""
    return torch.cat([((packed >> (2 * i)) & 3) for i in range(4)], dim=0).to(torch.int8) - 1


def repack_k3_to_k2(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Base-3 storage -> the 2-bit kernel layout (done once at load)."""
    return pack_k2(unpack_k3(packed, k))
