"""Pure BitNet b1.58 quantizers with the straight-through estimator (docs/METHODS.md#bitlinear-b158).

Weights, one scale per matrix:   gamma = mean(|W|) (or median, "b1.58 Reloaded"), clamped at 1e-5;
                                 W_q = clamp(round(W / gamma), -1, 1) * gamma.
Activations, one scale per token: s = 127 / max(|x|) (clamped at 1e-5);
                                  x_q = clamp(round(x * s), -128, 127) / s, in effect [-127, 127].
Both are computed in fp32 and cast back to the input dtype, as the reference code does.

Phase-in (HF "fine-tuning LLMs to 1.58 bit"): the forward value is x + lam * (q(x) - x), so lam = 0
is full precision and lam = 1 the quantizer. The backward pass is the identity for any lam
(straight-through, no clipping mask): d/dx [x + lam * (q(x) - x).detach()] = 1.
The identity gradient is a custom autograd function so that training pays for one quantized copy
and no extra autograd nodes; torch.compile traces it.

Per-projection schemes (activation_schemes.py; BitNet a4.8, arXiv 2411.04965, and BitNet v2, 2504.18415):
  int8_absmax        the b1.58 activation quantizer above.
  int4_absmean       beta = mean(|x|) per token; codes = clamp(round(sqrt(7) * x / (beta + 1e-5)), -8, 7);
                     x_q = codes * beta / sqrt(7). This is a4.8's INT4 quantizer (docs/METHODS.md#bitnet-a48 marks its
                     exact form [open]). Why this form: the paper's 4-bit ablation (its Figure 6) compares
                     absmax and absmean INT4 and keeps absmean, and its own sparsity table (Table 2) shows
                     12.0-12.1% zeros in the INT4 inputs (q/k/v, gate) at every model size. Under this form a
                     code is 0 when |x| < beta / (2 sqrt 7); for the Gaussian-like inputs the paper quantizes
                     to 4 bits, beta = sigma sqrt(2/pi), so that threshold is 0.151 sigma and 12.0% of the
                     entries are zero, as measured there (an absmax INT4 would zero about twice as many).
                     The multiplier is beta / sqrt(7), as written in the paper (not (beta + eps) / sqrt(7)).
  int8_absmax_topNN  Q-Sparse top-K: keep the ceil(NN% of K) largest magnitudes of each token, zero the
                     rest, then int8_absmax. The straight-through gradient reaches every entry, the
                     dropped ones included (Q-Sparse's STE through the mask).
Every scheme takes lambda and the straight-through estimator exactly as the b1.58 quantizer does.
`scheme_codes` gives the integer codes and per-token multipliers the inference runtime uses
(infer/activations.py calls it), so training and the exported model quantize identically.
"""

from __future__ import annotations

import math

import torch

from bitnet_train.activation_schemes import parse_scheme

SCALE_EPS = 1e-5
"""Lower clamp of weight and activation scales (reference code)."""


class _StraightThrough(torch.autograd.Function):
    """Forward returns `value` (computed without autograd); backward hands the gradient to `x` unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass, identity gradient to `x` in the backward pass."""
    return _StraightThrough.apply(x, value)


def _blend(x: torch.Tensor, q: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """x + lam * (q - x), skipping the blend for the common python-float lam in {0, 1}."""
    if isinstance(lam, (int, float)):
        if lam == 1:
            return q
        if lam == 0:
            return x
    return torch.lerp(x, q, lam)


def weight_scale(w: torch.Tensor, method: str = "absmean") -> torch.Tensor:
    """gamma of one weight matrix, fp32 scalar tensor: mean(|W|) or median(|W|), clamped at 1e-5."""
    a = w.detach().float().abs()
    gamma = a.mean() if method == "absmean" else a.median()
    return gamma.clamp(min=SCALE_EPS)


def ternary_codes(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Integer codes in {-1, 0, 1} (int8) of `w` at scale `gamma` (the codes quantize_weight uses)."""
    return (w.detach().float() * (1.0 / gamma)).round().clamp(-1, 1).to(torch.int8)


@torch.no_grad()
def _fake_quant_weight(w: torch.Tensor, method: str, lam: float | torch.Tensor) -> torch.Tensor:
    wf = w.float()
    # The reference code's arithmetic, bit for bit: multiply by 1 / gamma, divide by it again.
    # (W / gamma and * gamma differ from it by one ulp of gamma for about one matrix in seven.)
    inv = 1.0 / weight_scale(wf, method)
    q = (wf * inv).round_().clamp_(-1, 1).div_(inv)
    return _blend(wf, q, lam).to(w.dtype)


def quantize_weight(w: torch.Tensor, method: str = "absmean", lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Fake-quantized ternary weight (values in {-gamma, 0, gamma} at lam = 1) with STE gradient."""
    return straight_through(w, _fake_quant_weight(w, method, lam))


def activation_scale(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token scale s = (2^(bits-1) - 1) / max(|x|), fp32, shape x.shape[:-1] + (1,)."""
    qmax = 2 ** (bits - 1) - 1
    return qmax / x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_EPS)


def activation_codes(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8 for bits <= 8) and per-token scales s, so that x ~= codes / s."""
    s = activation_scale(x, bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = (x.detach().float() * s).round().clamp(lo, hi)
    return codes.to(torch.int8 if bits <= 8 else torch.int32), s


@torch.no_grad()
def _fake_quant_activation(x: torch.Tensor, bits: int, lam: float | torch.Tensor) -> torch.Tensor:
    xf = x.float()
    s = activation_scale(xf, bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = (xf * s).round_().clamp_(lo, hi).div_(s)
    return _blend(xf, q, lam).to(x.dtype)


def quantize_activation(x: torch.Tensor, bits: int = 8, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Fake-quantized per-token absmax activation with STE gradient."""
    return straight_through(x, _fake_quant_activation(x, bits, lam))


# ---- per-projection schemes (BitNet a4.8 / v2) ----------------------------------------------------

SQRT7 = math.sqrt(7)


def topk_sparsify(x: torch.Tensor, percent: int) -> torch.Tensor:
    """x with all but the ceil(percent% of K) largest magnitudes of each token (last dim) set to 0."""
    k = x.shape[-1]
    keep = max(1, -(-k * percent // 100))
    idx = x.abs().topk(keep, dim=-1).indices
    return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))


def _absmean_int4(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float codes in [-8, 7], per-token multiplier beta / sqrt 7) of fp32 x: the a4.8 INT4 quantizer."""
    beta = xf.abs().mean(dim=-1, keepdim=True)
    codes = (xf * (SQRT7 / (beta + SCALE_EPS))).round_().clamp_(-8, 7)
    return codes, beta / SQRT7


@torch.no_grad()
def scheme_codes(x: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, [..., K]) and per-token multipliers (fp32, [...]) with x ~= codes * multiplier."""
    sch = parse_scheme(scheme)
    xf = x.detach().float()
    if sch.topk_percent is not None:
        xf = topk_sparsify(xf, sch.topk_percent)
    if sch.absmean:
        codes, mult = _absmean_int4(xf)
        return codes.to(torch.int8), mult.squeeze(-1)
    codes, s = activation_codes(xf, sch.bits)
    return codes, (1.0 / s).squeeze(-1)


@torch.no_grad()
def _fake_quant_scheme(x: torch.Tensor, scheme: str, lam: float | torch.Tensor) -> torch.Tensor:
    sch = parse_scheme(scheme)
    xf = x.float()
    src = topk_sparsify(xf, sch.topk_percent) if sch.topk_percent is not None else xf
    if sch.absmean:
        codes, mult = _absmean_int4(src)
        q = codes.mul_(mult)
    else:
        s = activation_scale(src, sch.bits)
        q = (src * s).round_().clamp_(-(2 ** (sch.bits - 1)), 2 ** (sch.bits - 1) - 1).div_(s)
    return _blend(xf, q, lam).to(x.dtype)


def quantize_activation_scheme(x: torch.Tensor, scheme: str, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Fake-quantized activation under `scheme` (activation_schemes.py) with STE gradient to every entry of x.

    `int8_absmax` is exactly quantize_activation(x, 8, lam)."""
    if scheme == "int8_absmax":
        return quantize_activation(x, 8, lam)
    return straight_through(x, _fake_quant_scheme(x, scheme, lam))
