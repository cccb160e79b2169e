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

Under FSDP2 with the ternary-code gather (strategy.gather=codes / packed) the weight a layer sees in
forward already is Q_w(W); `gathered_weight_codes` reads its codes (the signs) and scale (max|W_q|)
back, so that gather runs the same integer forward.

`TernaryWeightCache` quantizes a latent weight once per optimizer step: it is keyed on the
parameter's version counter, which every in-place update bumps, and on a count of optimizer steps
(a global step hook of torch.optim, for updates that write through `.data`, as DeepSpeed's do), so
micro-batches of a gradient accumulation and evaluation passes reuse the codes, and the first
forward after a step recomputes them.

Layers that read the same activation (q/k/v, gate/up) share its codes in forward and its x_q in
backward (quant/shared_codes.py).

The elementwise work around the product (the codes, the norm, the epilogue, the dequantization for
backward) is written in quant/fused_kernels.py, which also runs it as generated fused kernels in an
eager model (`fused=True`, BitLinear's `fused_kernels = "auto"`). The activation codes are
round(x * s) without the fake-quant path's clamp to [-128, 127], which never acts: |x * s| <= 127 up
to two roundings, which round to 127.

Under autocast the matmul's output takes the autocast dtype, as F.linear's does; gradients come
back in the dtypes of x and the weight.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bitnet_train.quant import fused_kernels as fk
from bitnet_train.quant import shared_codes
from bitnet_train.quant.code_matmul import code_matmul, cpu_kernel, int_mm_takes  # noqa: F401 (int_mm_takes: re-exported)
from bitnet_train.quant.functional import SCALE_EPS, weight_scale

_OPTIMIZER_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)

@torch.no_grad()
def ternary_weight_codes(w: torch.Tensor, method: str = "absmean",
                         fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes in {-1, 0, 1}, fp32 scalar inv = 1 / gamma) with the fake-quant path's arithmetic
    (`fused`: the codes as one generated kernel, quant/fused_kernels.py; gamma is torch's mean either way)."""
    inv = 1.0 / weight_scale(w, method)
    return fk.run(fk.weight_codes, fused, w.numel(), w.detach(), inv), inv


@torch.no_grad()
def gathered_weight_codes(w_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, fp32 inv) of a weight that already is Q_w(W) = codes / inv: the all-gathered weight of
    FSDP2's ternary-code gather (parallel/ternary_gather.py), in the parameter dtype.

    Its nonzero entries are all +-gamma as stored, so codes = sign(W_q) exactly and gamma = max|W_q| is
    the value the fake-quant forward multiplies by; inv = 1 / gamma in fp32 (an all-zero weight keeps
    the quantizer's floor on gamma)."""
    gamma = w_q.abs().amax().float().clamp(min=SCALE_EPS)
    return torch.sign(w_q).to(torch.int8), 1.0 / gamma


def _output_dtype(ref: torch.Tensor) -> torch.dtype:
    """The product's dtype: the autocast dtype where autocast is on, else `ref`'s (as F.linear's)."""
    dev = ref.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else ref.dtype


def _product(x_codes, s, x_float, w_codes, inv, bias, dtype, fused: bool) -> torch.Tensor:
    """y [M, N] = (x_codes @ w_codes^T) / (s * inv) + bias in `dtype`: the code product (quant/code_matmul.py;
    `x_float`, the codes as fp32, for its float kernels) and one epilogue pass."""
    acc = code_matmul(x_codes, w_codes, x_float)
    return fk.run(fk.epilogue, fused, acc.numel(), acc, s, inv, bias, dtype)


def _wants_float_codes(x: torch.Tensor) -> bool:
    """Whether the code product here multiplies fp32 codes (FBGEMM or the fp32 GEMM, not torch._int_mm)."""
    return x.device.type == "cpu" and cpu_kernel() != "int_mm"


class _IntBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, w_codes, inv, fused, share):  # noqa: D401
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        dtype = _output_dtype(x2)
        (x_codes, s, x_float), ctx.readers = shared_codes.activation_codes(x, x2, _wants_float_codes(x2), fused,
                                                                           share)
        y = _product(x_codes, s, x_float, w_codes, inv, bias, dtype, fused)
        ctx.save_for_backward(x_codes, s, w_codes, inv)
        ctx.shape, ctx.dtype, ctx.has_bias, ctx.fused = shape, dtype, bias is not None, fused
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return y.reshape(*shape[:-1], w_codes.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x_codes, s, w_codes, inv = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_q = fk.run(fk.dequantize, ctx.fused, w_codes.numel(), w_codes, inv, ctx.dtype)
            grad_x = (g2 @ w_q).reshape(ctx.shape).to(ctx.x_dtype)
        x_q = shared_codes.dequantized(ctx.readers, x_codes, s, ctx.dtype, ctx.fused, ctx.needs_input_grad[1])
        if x_q is not None:
            grad_w = (g2.t() @ x_q).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0).to(ctx.b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def int_bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  w_codes: torch.Tensor, inv: torch.Tensor, fused: bool = False,
                  share: bool = True) -> torch.Tensor:
    """BitLinear at both lambdas 1 with the b1.58 int8 absmax activation quantizer, on integer codes.

    `w_codes`, `inv` are `ternary_weight_codes(weight)` (cached per optimizer step by the caller);
    the gradient reaches `weight` (and `x`, `bias`) straight through. `fused`: the elementwise work
    runs as generated kernels (quant/fused_kernels.py). `share`: the activation codes are shared with the
    other layers that read the same `x` (quant/shared_codes.py)."""
    return _IntBitLinear.apply(x, weight, bias, w_codes, inv, fused, share)


class _NormIntBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, eps, weight, bias, w_codes, inv, fused):  # noqa: D401
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        # h = RMSNorm(x) is quantized where it is made and never kept: its dtype is quant/norm.py's
        h_dtype = torch.float32 if x.dtype == gain.dtype == torch.float32 else torch.promote_types(gain.dtype, x.dtype)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else h_dtype
        x_codes, s, x_float, rstd = fk.run(fk.norm_activation_codes, fused, x2.numel(), x2, gain, eps,
                                           _wants_float_codes(x2))
        y = _product(x_codes, s, x_float, w_codes, inv, bias, dtype, fused)
        ctx.save_for_backward(x, rstd, gain, x_codes, s, w_codes, inv)
        ctx.dtype, ctx.h_dtype, ctx.has_bias, ctx.fused = dtype, h_dtype, bias is not None, fused
        ctx.w_dtype = weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return y.reshape(*shape[:-1], w_codes.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, rstd, gain, x_codes, s, w_codes, inv = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_x = grad_gain = grad_w = grad_b = None
        if ctx.needs_input_grad[3]:
            x_q = fk.run(fk.dequantize, ctx.fused, x_codes.numel(), x_codes, s, ctx.dtype)
            grad_w = (g2.t() @ x_q).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_b = g2.sum(0).to(ctx.b_dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            w_q = fk.run(fk.dequantize, ctx.fused, w_codes.numel(), w_codes, inv, ctx.dtype)
            dh = (g2 @ w_q).to(ctx.h_dtype).float()
            xf = x.reshape(-1, x.shape[-1]).float()
            # With xn = x * rstd: dg = sum_t dh * xn and dx = rstd * (g dh - xn * mean(g dh * xn)). Both
            # sums go through p = dh * xn: dg = sum_t p (torch's sum over tokens; a gemv rstd^T (dh x)
            # summed 4x less accurately, and so did a generated kernel's sum), sum_k g dh xn = p g, so that
            # dx = rstd * g * dh - (rstd^2 (p g) / K) * x. These stay torch ops: fused, they measured no faster.
            p = torch.mul(dh, xf).mul_(rstd)
            gf = gain.float()
            if ctx.needs_input_grad[1]:
                grad_gain = p.sum(0).reshape(gain.shape).to(gain.dtype)
            if ctx.needs_input_grad[0]:
                coef = (p @ gf).unsqueeze(-1).mul_(rstd.square()).div_(-xf.shape[-1])
                dx = torch.mul(dh, gf, out=p).mul_(rstd).addcmul_(xf, coef)
                grad_x = dx.to(x.dtype).reshape(x.shape)
        return grad_x, grad_gain, None, grad_w, grad_b, None, None, None


def norm_int_bitlinear(x: torch.Tensor, gain: torch.Tensor, eps: float, weight: torch.Tensor,
                       bias: torch.Tensor | None, w_codes: torch.Tensor, inv: torch.Tensor,
                       fused: bool = False) -> torch.Tensor:
    """`int_bitlinear(RMSNorm(x))` in one function (the norm's gain `gain`, epsilon `eps`), keeping for
    backward x, the per-token rstd and the integer codes instead of the norm's float output."""
    return _NormIntBitLinear.apply(x, gain, eps, weight, bias, w_codes, inv, fused)


class TernaryWeightCache:
    """The ternary codes of one latent weight, recomputed only when the weight has changed."""

    def __init__(self) -> None:
        self._key = None
        self._value = None

    def get(self, w: torch.Tensor, method: str, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            return ternary_weight_codes(w, method)
        key = (w._version, _OPTIMIZER_STEPS[0], w.data_ptr(), w.dtype, w.device, tuple(w.shape), method)
        if key != self._key:
            self._value = ternary_weight_codes(w, method, fused)
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None
