"""The integer forward's elementwise work as fused kernels that torch.compile (Inductor) generates.

Around its integer matmul, a BitLinear layer does elementwise and per-token work in the float dtype:
  activation codes    s = 127 / max|x| per token, codes = round(x * s) as int8 (quant/functional.py's
                      quantizer at lambda 1; its clamp to [-128, 127] never acts, see int_forward.py;
                      max|x| is abs().amax, as torch ops 15x faster on CPU than the inf-norm);
  norm + codes        the layer's own RMSNorm, rstd = 1 / sqrt(mean(x^2) + eps), h = g * (x * rstd),
                      cast as quant/norm.py casts it, then h's codes;
  epilogue            y = acc / (s * inv) (+ bias) of the int32 (or fp32) code product acc;
  dequantize          codes / scale, the straight-through backward's x_q and W_q;
  weight codes        clamp(round(W * inv), -1, 1) as int8, inv = 1 / gamma (gamma is computed apart).
Each is written below once, in plain torch ops; that text is the arithmetic. Run op by op (eager
ATen), the activation codes take about ten full passes over [tokens, K] fp32 tensors (abs, amax,
mul, round, the int8 cast, and for the norm the square, mean, two products) and an int8 / fp32
division promotes through a slow path: on 2 CPU threads the norm and its codes take 2.0 ms as torch ops
and 0.7 ms fused for 2048 x 688, 33 ms and 11 ms for 2048 x 6912 (tools/bench_fused_kernels.py).
Inductor compiles the same function into one loop nest that reads a row and writes its codes.

When each form runs (`run(kernel, fused, *args)`):
  - inside a torch.compile trace, always the plain ops: the model's own compilation fuses them
    with their neighbours;
  - `fused=False` (BitLinear's `fused_kernels = "off"`, config quant.fused_kernels=off), or inputs
    under MIN_ELEMENTS elements: the plain ops. Compiling the kernels costs seconds once per process
    (tools/bench_qat.py's first eager step of the tiny model: b158 5.3-5.9 s against 1.5-1.6 s with
    fused_kernels off, Inductor's on-disk cache warm), which small tensors never earn back; their ops take microseconds;
  - otherwise the compiled kernel (dynamic shapes: one compilation per kernel, dtype and rank).
    If compiling fails (for example no C++ compiler on a CPU machine), a warning says so once and
    the plain ops run from then on.

Numerics. The kernels compute the same operations in the same dtypes; only the order of the fp32
sum in mean(x^2) may differ (Inductor's reduction order against ATen's), which moves rstd by an ulp
and, for an h that lands within that ulp of a rounding boundary, its code by one (3 of 14.2 million
codes at 2048 x 6912 in tools/bench_fused_kernels.py). The codes of an activation without a norm, the epilogue, the dequantized
tensors and the weight codes are bit-identical to the plain ops (max is exact; the rest is
elementwise). tests/unit/quant/test_fused_kernels.py checks both statements.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from bitnet_train.quant.functional import SCALE_EPS

MIN_ELEMENTS = {"activation_codes": 1 << 16, "norm_activation_codes": 1 << 16, "weight_codes": 1 << 16,
                "epilogue": 1 << 20, "dequantize": 1 << 20}
"""Inputs with fewer elements run the plain ops. Entering a compiled call (its guards) costs more than a
torch op, so the one-op epilogue and dequantization lose at 2048 x 256 (1.08x and 1.22x the torch ops'
time) and gain from about 10^6 elements (2048 tokens x 512), the many-op quantizers already at
2048 x 256 (tools/bench_fused_kernels.py)."""

FUSED_KERNEL_MODES = ("auto", "off")


# ---- the arithmetic, once ------------------------------------------------------------------------

def activation_codes(t: torch.Tensor, want_float: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(int8 codes [M, K], fp32 per-token s [M, 1], the codes as fp32 or None) of fp32 `t` [M, K]."""
    s = 127 / t.abs().amax(-1, keepdim=True).clamp(min=SCALE_EPS)
    codes_f = torch.mul(t, s).round_()
    return codes_f.to(torch.int8), s, (codes_f if want_float else None)


def norm_activation_codes(x: torch.Tensor, gain: torch.Tensor, eps: float, want_float: bool):
    """(int8 codes, s, codes as fp32 or None, fp32 rstd [M, 1]) of h = RMSNorm(x) for x [M, K]:
    quant/norm.py's arithmetic (fp32 normalization; with a non-fp32 x or gain, xn is cast to x's dtype
    and multiplied by the gain there), then `activation_codes` of h in fp32."""
    xf = x.float()
    rstd = torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)
    xn = xf * rstd
    h = xn.mul_(gain) if x.dtype == torch.float32 and gain.dtype == torch.float32 else gain * xn.to(x.dtype)
    codes, s, codes_f = activation_codes(h.float(), want_float)
    return codes, s, codes_f, rstd


def _to_fp32_divided(t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """t / d in fp32, for an integer (or fp32) t: the fp32 copy of an integer t is divided in place, which as
    torch ops saves allocating (and faulting in) a second result of t's size; the numbers are the same."""
    return t / d if t.dtype == torch.float32 else t.float().div_(d)


def epilogue(acc: torch.Tensor, s: torch.Tensor, inv: torch.Tensor, bias: torch.Tensor | None,
             dtype: torch.dtype) -> torch.Tensor:
    """(acc / (s * inv)) in `dtype`, plus the bias (cast to `dtype`): acc is the int32 or fp32 code product
    [M, N], s [M, 1] per token, inv = 1 / gamma; acc converts exactly
    (|acc| < 2^24) and divides once in fp32."""
    y = _to_fp32_divided(acc, s * inv).to(dtype)
    return y if bias is None else y + bias.to(dtype)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(codes / scale) computed in fp32, in `dtype`: x_q with a per-token s [M, 1], W_q with inv (a scalar)."""
    return _to_fp32_divided(codes, scale).to(dtype)


def weight_codes(w: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """int8 clamp(round(w * inv), -1, 1) of a latent weight, multiplied in fp32 (inv = 1 / gamma, fp32)."""
    return (w.float() * inv).round().clamp(-1, 1).to(torch.int8)


# ---- when to run which -----------------------------------------------------------------------------

class _Compiled:
    """One function's compiled kernel, made on first use; `failed` once compiling it has failed."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.kernel = None
        self.failed = False

    def __call__(self, *args):
        if self.kernel is None:
            # emulate_precision_casts: a cast to bf16 inside the kernel rounds there, as the torch ops round
            self.kernel = torch.compile(self.fn, dynamic=True, fullgraph=True,
                                        options={"emulate_precision_casts": True})
        try:
            return self.kernel(*args)
        except Exception as err:  # noqa: BLE001 - any compile failure falls back to the same ops, unfused
            self.failed = True
            warnings.warn(f"bitnet_train: the fused {self.fn.__name__} kernel could not be compiled "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); its plain "
                          "torch ops run instead (same numbers, slower). quant.fused_kernels=off silences this.",
                          RuntimeWarning, stacklevel=3)
            return self.fn(*args)


_KERNELS: dict[Callable, _Compiled] = {}


def run(fn: Callable, fused: bool, size: int, *args):
    """`fn(*args)`, as its compiled kernel when `fused`, `size` (elements of the input that sets the
    work) >= MIN_ELEMENTS[fn's name], this is not a torch.compile trace and compiling has not failed."""
    if not fused or size < MIN_ELEMENTS[fn.__name__] or torch.compiler.is_compiling():
        return fn(*args)
    compiled = _KERNELS.get(fn)
    if compiled is None:
        compiled = _KERNELS[fn] = _Compiled(fn)
    if compiled.failed:
        return fn(*args)
    return compiled(*args)


def reset() -> None:
    """Forget the compiled kernels and any failure (tests)."""
    _KERNELS.clear()
