"""Per-token activation quantizers of the inference runtime, named as the native format records them.

Each returns integer codes (int8) and a per-token multiplier a (fp32) with x ~= codes * a, which the
ternary matmul applies in its epilogue (kernels/reference.py). The arithmetic is training's own:
quant/functional.scheme_codes computes the codes and multipliers of every scheme (names in
activation_schemes.py), so an exported model quantizes exactly as it trained.

- `int8_absmax` (BitNet b1.58, every projection): s = 127 / max|x| (clamped at 1e-5),
  codes = clamp(round(x * s), -128, 127), a = 1 / s.
- `int4_absmean` (BitNet a4.8, inputs of q/k/v and gate/up; BitNet v2 a4, every projection):
  beta = mean|x|, codes = clamp(round(sqrt(7) * x / (beta + 1e-5)), -8, 7), a = beta / sqrt(7).
- `int8_absmax_topNN` (BitNet a4.8, input of o_proj with NN = 50): keep the ceil(NN% of K)
  largest magnitudes of each token, zero the rest, then `int8_absmax`.
"""

from __future__ import annotations

import torch

from bitnet_train.quant.functional import scheme_codes
from bitnet_train.activation_schemes import is_known_scheme

__all__ = ["int4_absmean", "int8_absmax", "is_known_scheme", "encode_activation"]


def int8_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return scheme_codes(x, "int8_absmax")


def int4_absmean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return scheme_codes(x, "int4_absmean")


def encode_activation(x: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [..., K], multipliers fp32 [...]) of x under `scheme`; ValueError for an unknown scheme."""
    return scheme_codes(x, scheme)
