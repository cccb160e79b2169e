"""BitLinear's integer forward: int8 activation codes x ternary weight codes, int32 accumulation.

At lambda 1 the fake-quant forward of BitNet b1.58 (quant/functional.py) is
    y = linear((codes_x / s).to(dtype), (codes_w / inv).to(dtype)) + b,
with per-token s = 127 / max|x| and inv = 1 / gamma. The same product computed on the codes,
    y = (codes_x @ codes_w^T) / (s * inv) + b,
accumulates exactly in int32 (`torch._int_mm`; a matmul of the codes in fp32 where `_int_mm` does
not take the shapes: every partial sum is an integer below 2^24 for K < 132,000, so it is exact
too) and rounds once in the epilogue. This is the "W1.58A8" matmul of the BitNet b1.58 papers and
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

from bitnet_train.quant.functional import activation_scale, weight_scale

_OPTIMIZER_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)

CODE_MATMUL_MAX_K = 132_000
"""Largest inner size at which an fp32 matmul of int8 x ternary codes is exact (127 * K < 2^24)."""


def int_mm_takes(m: int, k: int, n: int, device: torch.device) -> bool:
    """Whether `torch._int_mm` accepts [m, k] x [k, n] on `device` (CUDA: m > 16, k >= 16, k and n
    multiples of 8; CPU: any shape)."""
    if device.type == "cuda":
        return m > 16 and k >= 16 and k % 8 == 0 and n % 8 == 0
    return device.type == "cpu"


def code_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """Exact integer product a @ b_t^T of int8 [M, K] and int8 [N, K], as fp32 [M, N]."""
    m, k = a.shape
    n = b_t.shape[0]
    if int_mm_takes(m, k, n, a.device):
        return torch._int_mm(a, b_t.t()).float()
    if k >= CODE_MATMUL_MAX_K:
        raise ValueError(f"inner size {k} is too large for an exact fp32 code matmul (< {CODE_MATMUL_MAX_K})")
    return a.float() @ b_t.float().t()


@torch.no_grad()
def ternary_weight_codes(w: torch.Tensor, method: str = "absmean") -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes in {-1, 0, 1}, fp32 scalar inv = 1 / gamma) with the fake-quant path's arithmetic."""
    inv = 1.0 / weight_scale(w, method)
    return (w.detach().float() * inv).round_().clamp_(-1, 1).to(torch.int8), inv


@torch.no_grad()
def int8_activation_codes(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [M, K], fp32 per-token s [M, 1]) of x2 [M, K], with the fake-quant arithmetic."""
    xf = x2.float()
    s = activation_scale(xf, 8)
    return (xf * s).round_().clamp_(-128, 127).to(torch.int8), s


def _code_product(x2: torch.Tensor, w_codes: torch.Tensor, inv: torch.Tensor, bias: torch.Tensor | None):
    """The integer forward of x2 [M, K]: (y [M, N] in the autocast or x2's dtype, x2's codes, s, that dtype)."""
    x_codes, s = int8_activation_codes(x2)
    acc = code_matmul(x_codes, w_codes)
    dev = x2.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x2.dtype
    y = acc.div_(s * inv).to(dtype)  # acc is a fresh fp32 tensor: scaled in place, one pass
    if bias is not None:
        y = y + bias.to(dtype)
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


class _NormIntBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, eps, weight, bias, w_codes, inv):  # noqa: D401
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rstd = torch.rsqrt(x2.float().pow(2).mean(-1, keepdim=True) + eps)
        h = gain * (x2.float() * rstd).to(x.dtype)  # quant/norm.py's RMSNorm, op for op
        y, x_codes, s, dtype = _code_product(h, w_codes, inv, bias)
        ctx.save_for_backward(x, rstd, gain, x_codes, s, w_codes, inv)
        ctx.dtype, ctx.h_dtype, ctx.has_bias = dtype, h.dtype, bias is not None
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
            grad_h = (g2 @ w_q).to(ctx.h_dtype)
            x2 = x.reshape(-1, x.shape[-1]).float()
            xn = x2 * rstd
            if ctx.needs_input_grad[1]:
                grad_gain = (grad_h * xn.to(x.dtype)).sum(0).to(gain.dtype)
            if ctx.needs_input_grad[0]:
                dxn = (grad_h * gain).to(x.dtype).float()
                dx = rstd * (dxn - xn * (dxn * xn).mean(-1, keepdim=True))
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
