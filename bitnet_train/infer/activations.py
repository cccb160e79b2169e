"""Per-token activation quantizers of the inference runtime, named as the native format records them.

Each returns integer codes (int8) and a per-token multiplier a (fp32) with x ~= codes * a, which the
ternary matmul applies in its epilogue (kernels/reference.py). Computed in fp32, as training does.

- `int8_absmax` (BitNet b1.58, every projection): s = 127 / max|x| (clamped at 1e-5),
  codes = clamp(round(x * s), -128, 127), a = 1 / s. The same codes as training's
  quant/functional.activation_codes.
- `int4_absmean` (BitNet a4.8, inputs of q/k/v and gate/up; SPEC section 2's form):
  beta = mean|x|, codes = clamp(round(sqrt(7) * x / (beta + 1e-5)), -8, 7), a = beta / sqrt(7).
- `int8_absmax_topNN` (BitNet a4.8, input of o_proj with NN = 50): keep the ceil(NN% of K)
  largest magnitudes of each token, zero the rest, then `int8_absmax`.
"""

from __future__ import annotations

import math
import re

import torch

from bitnet_train.quant.functional import SCALE_EPS

_TOPK = re.compile(r"^int8_absmax_top(\d{1,2})$")


def int8_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    s = 127 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_EPS)
    codes = (xf * s).round().clamp(-128, 127).to(torch.int8)
    return codes, (1.0 / s).squeeze(-1)


def int4_absmean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    beta = xf.abs().mean(dim=-1, keepdim=True)
    codes = (xf * (math.sqrt(7) / (beta + SCALE_EPS))).round().clamp(-8, 7).to(torch.int8)
    return codes, (beta / math.sqrt(7)).squeeze(-1)


def _topk_int8(x: torch.Tensor, percent: int) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    keep = max(1, math.ceil(xf.shape[-1] * percent / 100))
    idx = xf.abs().topk(keep, dim=-1).indices
    sparse = torch.zeros_like(xf).scatter_(-1, idx, xf.gather(-1, idx))
    return int8_absmax(sparse)


def is_known_scheme(name: str) -> bool:
    match = _TOPK.match(name)
    return name in ("int8_absmax", "int4_absmean") or (match is not None and 0 < int(match.group(1)) < 100)


def quantize_activation(x: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [..., K], multipliers fp32 [...]) of x under `scheme`."""
    if scheme == "int8_absmax":
        return int8_absmax(x)
    if scheme == "int4_absmean":
        return int4_absmean(x)
    match = _TOPK.match(scheme)
    if match is not None and is_known_scheme(scheme):
        return _topk_int8(x, int(match.group(1)))
    raise ValueError(f"unknown activation scheme {scheme!r}")
