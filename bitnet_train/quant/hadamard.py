"""The online Hadamard rotation of BitNet v2's H-BitLinear (arXiv 2504.18415).

H-BitLinear multiplies its (normed) input by the normalized Sylvester-Hadamard matrix before the
activation quantizer, on the inputs of o_proj and down_proj: the rotation spreads the outlier
channels of those intermediate states over all channels, so they become Gaussian-like and survive
4-bit quantization. The matrix is orthonormal and symmetric, so it is its own inverse, and the
layer simply learns its weight in the rotated basis (y = W_q Q(H x)).

    H_1 = [1],  H_2m = [[H_m, H_m], [H_m, -H_m]] / sqrt(2)      (size a power of two)

`hadamard_transform` applies it along the last dimension with a fast Walsh-Hadamard transform in
O(n log n), not the O(n^2) product. Since H_(ab) = H_a (x) H_b, the input is viewed as a tensor with
one axis per factor of at most 32 (512 = 32 x 16) and each axis is multiplied by its small +-1 matrix:
a radix-32 transform, ceil(log2(n) / 5) matrix products of 32 multiply-adds per entry each, instead
of log2(n) butterfly passes of one addition each (each pass a small memory-bound step: several times
slower in eager torch at n = 512). In fp32, cast back to the input dtype;
plain torch ops, so gradients flow through it (it is linear).
A dimension that is not a power of two takes a documented block-diagonal rotation: with `block` = b
(a power of two dividing n) each consecutive group of b channels is rotated by H_b, i.e. the matrix
is I_(n/b) (x) H_b, still orthonormal and its own inverse, but it only mixes channels within a block.
"""

from __future__ import annotations

import torch

from bitnet_train.config import ConfigError


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


def check_hadamard_size(n: int, block: int | None, where: str) -> int:
    """The block size used for a dimension of n (n itself by default); ConfigError when it cannot be used."""
    b = n if block is None else block
    if not is_power_of_two(b) or b < 2:
        if block is None:
            raise ConfigError(
                f"{where}: the Hadamard rotation needs a power-of-two input size, got {n}; use a power-of-two "
                "model dimension (e.g. model.intermediate_size=512) or set quant.hadamard_block to a power of "
                f"two dividing {n} (a block-diagonal rotation)")
        raise ConfigError(f"quant.hadamard_block={block} must be a power of two >= 2")
    if n % b:
        raise ConfigError(f"{where}: quant.hadamard_block={b} does not divide the input size {n}; choose a power of "
                          f"two that divides it")
    return b


RADIX_BITS = 5
"""Largest factor of one stage: 2^5 = 32."""

_MATRICES: dict[tuple[int, torch.device], torch.Tensor] = {}


def sylvester(m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The unnormalized m x m Sylvester-Hadamard matrix (+-1 entries, fp32), cached per size and device."""
    key = (m, torch.device(device))
    if key not in _MATRICES:
        h = torch.ones(1, 1)
        while h.shape[0] < m:
            h = torch.cat((torch.cat((h, h), dim=1), torch.cat((h, -h), dim=1)), dim=0)
        _MATRICES[key] = h.to(key[1])
    return _MATRICES[key]


def hadamard_transform(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """x times the normalized Hadamard matrix along the last dim (block-diagonal with blocks of `block`)."""
    n = x.shape[-1]
    b = n if block is None else block
    if not is_power_of_two(b) or n % b:
        raise ValueError(f"Hadamard block {b} must be a power of two dividing the last dimension {n}")
    bits, sizes = b.bit_length() - 1, []
    while bits > 0:
        sizes.append(2 ** min(RADIX_BITS, bits))
        bits -= min(RADIX_BITS, bits)
    y = x.float().reshape(-1, n // b, *sizes)
    for axis, m in enumerate(sizes, start=2):
        y = torch.movedim(torch.movedim(y, axis, -1) @ sylvester(m, y.device), -1, axis)
    return (y.reshape(x.shape) * b ** -0.5).to(x.dtype)
