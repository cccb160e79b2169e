"""BitLinear's integer forward: int8 activation codes x ternary weight codes, int32 accumulation.

At lambda 1 the fake-quant forward of BitNet b1.58 (quant/functional.py) is
    y = linear((codes_x / s).to(dtype), (codes_w / inv).to(dtype)) + b,
with per-token s = 127 / max|x| and inv = 1 / gamma. The same product computed on the codes,
    y = (codes_x @ codes_w^T) / (s * inv) + b,
is an exact integer matrix (quant/code_matmul.py computes it on the fastest of `torch._int_mm`,
FBGEMM's int8 GEMM and an fp32 GEMM of the codes, which all give the same numbers) and rounds once
in the epilogue. This is the "W1.58A8" matmul of the BitNet b1.58 papers and
of torchao's bitnet training prototype. The result differs from the fake-quant forward only by the
float rounding of the latter (tests/unit/quant/test_int_forward.py states the tolerance).

Backward is the straight-through estimator in the float dtype, as in the fake-quant path:
grad_x = grad_y @ W_q, grad_W = grad_y^T @ x_q, where x_q and W_q are rebuilt from the saved int8
codes and fp32 scales (no quantized float copies are kept for backward). The rebuilt x_q and W_q
equal the fake-quant ones bit for bit, so the gradients are those of the fake-quant path.

With the layer's own input norm (the subln / all_linear RMSNorms), `norm_int_bitlinear` fuses
that norm into the same function: forward h = g * (x * rstd) with rstd = 1 / sqrt(mean(x^2) + eps)
in fp32, cast as quant/norm.py casts it, then the integer product of h's codes; it keeps for
backward x, rstd and the codes, where the unfused norm keeps x and x * rstd (one more full-size
float tensor per norm: the FFN-wide input of down_proj among them). Backward writes out the
RMSNorm's gradient (with xn = x * rstd and dxn = g * dh, both in fp32:
dx = rstd * (dxn - xn * mean(dxn * xn)), dg = sum over tokens of dh * xn), rebuilding xn
from x and rstd.

`TernaryWeightCache` quantizes a latent weight once per optimizer step: it is keyed on the
parameter's version counter, which every in-place update bumps, and on a count of optimizer steps
(a global step hook of torch.optim, for updates that write through `.data`, as DeepSpeed's do), so
micro-batches of a gradient accumulation and evaluation passes reuse the codes, and the first
forward after a step recomputes them.

Under autocast the matmul's output takes the autocast dtype, as F.linear's does; gradients come
back in the dtypes of x and the weight.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bitnet_train.quant.code_matmul import code_matmul, int_mm_takes  # noqa: F401 (int_mm_takes: re-exported)
from bitnet_train.quant.functional import SCALE_EPS, weight_scale

_OPTIMIZER_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)

@torch.no_grad()
def ternary_weight_codes(w: torch.Tensor, method: str = "absmean") -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes in {-1, 0, 1}, fp32 scalar inv = 1 / gamma) with the fake-quant path's arithmetic."""
    inv = 1.0 / weight_scale(w, method)
    return (w.detach().float() * inv).round_().clamp_(-1, 1).to(torch.int8), inv


def _round_to_codes(t: torch.Tensor, in_place: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 codes, fp32 per-token s, the codes as fp32) of fp32 [M, K] `t`; `in_place`: t is a fresh
    tensor nothing else reads, and the fp32 codes overwrite it.

    s = 127 / max|t| (clamped as `activation_scale` clamps it), codes = round(t * s): the fake-quant
    arithmetic. max|t| is `abs().amax` (on CPU 15x faster than the inf-norm `linalg.vector_norm`,
    which reads once but does not vectorize: 2.2 ms against 0.16 ms for [2048, 688]), and the
    clamp to [-128, 127] of the fake-quant path is left out because it never acts: |t * s| <= 127
    up to two roundings, which round to 127."""
    amax = t.abs().amax(-1, keepdim=True)
    s = 127 / amax.clamp_(min=SCALE_EPS)
    t = (t.mul_(s) if in_place else torch.mul(t, s)).round_()
    return t.to(torch.int8), s, t


@torch.no_grad()
def int8_activation_codes(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [M, K], fp32 per-token s [M, 1]) of x2 [M, K], with the fake-quant arithmetic."""
    xf = x2.float()
    codes, s, _ = _round_to_codes(xf, in_place=xf is not x2)
    return codes, s


def _epilogue(x_codes, s, x_float, w_codes, inv, bias, ref: torch.Tensor):
    """y [M, N] = (x_codes @ w_codes^T) / (s * inv) + bias, in the autocast dtype or `ref`'s."""
    acc = code_matmul(x_codes, w_codes, x_float)
    dev = ref.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else ref.dtype
    # one pass: an int32 product converts exactly (|acc| < 2^24) and divides as float(acc) / (s * inv)
    y = torch.div(acc, s * inv) if acc.dtype != torch.float32 else acc.div_(s * inv)
    y = y.to(dtype)
    if bias is not None:
        y = y.add_(bias) if bias.dtype == dtype else y + bias.to(dtype)
    return y, dtype


def _code_product(x2: torch.Tensor, w_codes: torch.Tensor, inv: torch.Tensor, bias: torch.Tensor | None):
    """The integer forward of x2 [M, K]: (y [M, N] in the autocast or x2's dtype, x2's codes, s, that dtype)."""
    xf = x2.float()
    x_codes, s, x_float = _round_to_codes(xf, in_place=xf is not x2)
    y, dtype = _epilogue(x_codes, s, x_float, w_codes, inv, bias, x2)
    return y, x_codes, s, dtype


class _IntBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, w_codes, inv):  # noqa: D401
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y, x_codes, s, dtype = _code_product(x2, w_codes, inv, bias)
        ctx.save_for_backward(x_codes, s, w_codes, inv)
        ctx.shape, ctx.dtype, ctx.has_bias = shape, dtype, bias is not None
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return y.reshape(*shape[:-1], w_codes.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x_codes, s, w_codes, inv = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_q = (w_codes / inv).to(ctx.dtype)  # int8 / fp32 computes in fp32: one pass, same values
            grad_x = (g2 @ w_q).reshape(ctx.shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            x_q = (x_codes / s).to(ctx.dtype)
            grad_w = (g2.t() @ x_q).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0).to(ctx.b_dtype)
        return grad_x, grad_w, grad_b, None, None


def int_bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  w_codes: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """BitLinear at both lambdas 1 with the b1.58 int8 absmax activation quantizer, on integer codes.

    `w_codes`, `inv` are `ternary_weight_codes(weight)` (cached per optimizer step by the caller);
    the gradient reaches `weight` (and `x`, `bias`) straight through."""
    return _IntBitLinear.apply(x, weight, bias, w_codes, inv)


def _rms_norm_fp32(x2: torch.Tensor, gain: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, rstd) of quant/norm.py's RMSNorm, op for op, with h a fresh tensor (fp32 for fp32 x2 and gain)."""
    xf = x2.float()
    sq = xf * xf  # == pow(2); its buffer then takes x * rstd
    rstd = torch.rsqrt(sq.mean(-1, keepdim=True) + eps)
    xn = torch.mul(xf, rstd, out=sq)
    if x2.dtype == torch.float32 and gain.dtype == torch.float32:
        return xn.mul_(gain), rstd  # gain * xn, in place (the same products)
    return gain * xn.to(x2.dtype), rstd


class _NormIntBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, eps, weight, bias, w_codes, inv):  # noqa: D401
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        h, rstd = _rms_norm_fp32(x2, gain, eps)
        h_dtype = h.dtype
        # h is not needed again: it is quantized in its own buffer (its fp32 copy where h is not fp32)
        x_codes, s, x_float = _round_to_codes(h.float(), in_place=True)
        y, dtype = _epilogue(x_codes, s, x_float, w_codes, inv, bias, h)
        ctx.save_for_backward(x, rstd, gain, x_codes, s, w_codes, inv)
        ctx.dtype, ctx.h_dtype, ctx.has_bias = dtype, h_dtype, bias is not None
        ctx.w_dtype = weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return y.reshape(*shape[:-1], w_codes.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, rstd, gain, x_codes, s, w_codes, inv = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_x = grad_gain = grad_w = grad_b = None
        if ctx.needs_input_grad[3]:
            x_q = (x_codes / s).to(ctx.dtype)
            grad_w = (g2.t() @ x_q).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_b = g2.sum(0).to(ctx.b_dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            w_q = (w_codes / inv).to(ctx.dtype)
            dh = (g2 @ w_q).to(ctx.h_dtype).float()
            xf = x.reshape(-1, x.shape[-1]).float()
            # With xn = x * rstd: dg = sum_t dh * xn and dx = rstd * (g dh - xn * mean(g dh * xn)). Both
            # sums go through p = dh * xn: dg = sum_t p (torch's sum over tokens; a gemv rstd^T (dh x)
            # summed 4x less accurately), sum_k g dh xn = p g, so that dx = rstd * g * dh - (rstd^2 (p g) / K) * x.
            p = torch.mul(dh, xf).mul_(rstd)
            gf = gain.float()
            if ctx.needs_input_grad[1]:
                grad_gain = p.sum(0).reshape(gain.shape).to(gain.dtype)
            if ctx.needs_input_grad[0]:
                coef = (p @ gf).unsqueeze(-1).mul_(rstd.square()).div_(-xf.shape[-1])
                dx = torch.mul(dh, gf, out=p).mul_(rstd).addcmul_(xf, coef)
                grad_x = dx.to(x.dtype).reshape(x.shape)
        return grad_x, grad_gain, None, grad_w, grad_b, None, None


def norm_int_bitlinear(x: torch.Tensor, gain: torch.Tensor, eps: float, weight: torch.Tensor,
                       bias: torch.Tensor | None, w_codes: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """`int_bitlinear(RMSNorm(x))` in one function (the norm's gain `gain`, epsilon `eps`), keeping for
    backward x, the per-token rstd and the integer codes instead of the norm's float output."""
    return _NormIntBitLinear.apply(x, gain, eps, weight, bias, w_codes, inv)


class TernaryWeightCache:
    """The ternary codes of one latent weight, recomputed only when the weight has changed."""

    def __init__(self) -> None:
        self._key = None
        self._value = None

    def get(self, w: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            return ternary_weight_codes(w, method)
        key = (w._version, _OPTIMIZER_STEPS[0], w.data_ptr(), w.dtype, w.device, tuple(w.shape), method)
        if key != self._key:
            self._value = ternary_weight_codes(w, method)
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None
