"""The exact integer product of int8 activation codes and ternary weight codes, on the fastest kernel here.

x_codes [M, K] (int8, |c| <= 127) times w_codes [N, K]^T (int8 in {-1, 0, 1}) is an integer matrix with
|y| <= 127 K. Three kernels compute it exactly, so which one runs changes the speed and nothing else:

  int_mm  `torch._int_mm`, int8 x int8 -> int32: cuBLAS on CUDA; on CPU oneDNN, which is fast only where
          the CPU has int8 dot-product instructions (on an AVX2-only CPU it measured 20-60x slower than an
          fp32 GEMM of the same shape).
  fbgemm  FBGEMM's int8 GEMM with fp32 output (`quantized::linear_with_input_q_dq_qweight_dq_output_fp32`):
          the codes, as floats, quantized at scale 1 and zero point 128 (exactly codes + 128 as uint8), the
          weight codes a per-tensor qint8 at scale 1 and zero point 0, prepacked once per set of weight codes
          (so once per optimizer step with the weight cache). Its output is the integer product in fp32,
          exact while 127 K < 2^24. x86 CPUs (AVX2 and up); about 2x an fp32 GEMM on an AVX2-only CPU.
          torch has marked its quantized tensors deprecated; where a build drops them, this kernel is
          simply not available and the choice is between the other two.
  float   an fp32 GEMM of the codes as floats: every partial sum is an integer below 2^24 for
          K < 132,000, so it is exact too. It runs with autocast off: a bf16 product would round sums
          above 256. (CUDA's TF32 is exact here: codes need 7 bits of its 10-bit mantissa, and it
          accumulates in fp32.)

On CUDA: int_mm where its shape rule allows, else float. On CPU the first product of the process times
each available kernel on one [512, 1024] x [1024, 1024] product (best of 9, interleaved, after a
warm-up; a kernel whose first timed product takes 10x the best so far is not timed further) and
keeps the fastest; `set_cpu_kernel` fixes the choice instead (tests, benchmarks). On an AVX512-VNNI
CPU int_mm wins (about 4x an fp32 GEMM), on an AVX2-only CPU FBGEMM does (int_mm is 20-60x slower
than fp32 there). Under torch.compile the FBGEMM product is one opaque custom op; the weight codes
are then computed inside the graph on every forward, so they are also packed on every forward (still
faster than an fp32 GEMM: measured 122 ms to pack and 615 ms to multiply against 1103 ms for
[2048, 6912] x [6912, 2560] on an AVX2-only CPU).
"""

from __future__ import annotations

import time
import warnings

import torch

CODE_MATMUL_MAX_K = 132_000
"""Largest inner size at which an fp32 product of int8 x ternary codes is exact (127 * K < 2^24)."""

CPU_KERNELS = ("int_mm", "fbgemm", "float")
_CPU_KERNEL: list[str | None] = [None]
_CALIBRATION_SHAPE = (512, 1024, 1024)
_CALIBRATION_ROUNDS = 8


def int_mm_takes(m: int, k: int, n: int, device: torch.device) -> bool:
    """Whether `torch._int_mm` accepts [m, k] x [k, n] on `device` (CUDA: m > 16, k >= 16, k and n
    multiples of 8; CPU: any shape)."""
    if device.type == "cuda":
        return m > 16 and k >= 16 and k % 8 == 0 and n % 8 == 0
    return device.type == "cpu"


_FBGEMM_OP: list = []


def _fbgemm_op():
    """FBGEMM's fp32-output int8 linear, or None where this torch build has no FBGEMM."""
    if not _FBGEMM_OP:
        op = None
        try:
            if "fbgemm" in torch.backends.quantized.supported_engines:
                op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        except (AttributeError, RuntimeError):
            op = None
        _FBGEMM_OP.append(op)
    return _FBGEMM_OP[0]


def fbgemm_packed(w_codes: torch.Tensor):
    """FBGEMM's prepacked form of int8 ternary codes [N, K] (scale 1, zero point 0), kept on the codes
    tensor so that every product with the same codes reuses it."""
    packed = getattr(w_codes, "_fbgemm_packed", None)
    if packed is None:
        with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; see the note on top
            warnings.simplefilter("ignore", UserWarning)
            q = torch._make_per_tensor_quantized_tensor(w_codes.contiguous(), 1.0, 0)
            packed = torch.ops.quantized.linear_prepack(q, None)
        w_codes._fbgemm_packed = packed
    return packed


@torch.library.custom_op("bitnet_train::fbgemm_code_matmul", mutates_args=())
def _fbgemm_code_matmul(x_float: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    """FBGEMM's product of fp32 activation codes [M, K] and int8 weight codes [N, K]: fp32 [M, N].

    A custom op, so that torch.compile keeps it as one opaque call (the packed weight is not a tensor)."""
    return _fbgemm_op()(x_float.contiguous(), 1.0, 128, fbgemm_packed(w_codes))


@_fbgemm_code_matmul.register_fake
def _(x_float: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    return x_float.new_empty(x_float.shape[0], w_codes.shape[0])


def _run(kernel: str, x_codes: torch.Tensor, x_float: torch.Tensor | None, w_codes: torch.Tensor) -> torch.Tensor:
    if kernel == "int_mm":
        return torch._int_mm(x_codes, w_codes.t())
    if x_codes.shape[1] >= CODE_MATMUL_MAX_K:
        raise ValueError(f"inner size {x_codes.shape[1]} is too large for an exact fp32 code product "
                         f"(< {CODE_MATMUL_MAX_K})")
    xf = x_float if x_float is not None else x_codes.float()
    if kernel == "fbgemm":
        return _fbgemm_code_matmul(xf, w_codes)
    with torch.autocast(xf.device.type, enabled=False):  # autocast would multiply in bf16/fp16: inexact
        return xf @ w_codes.float().t()


def available_cpu_kernels() -> list[str]:
    return [k for k in CPU_KERNELS if k != "fbgemm" or _fbgemm_op() is not None]


@torch.compiler.disable
def _calibrate() -> str:
    m, k, n = _CALIBRATION_SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    xf = x.float()

    def timed(kernel: str) -> float:
        t0 = time.perf_counter()
        _run(kernel, x, xf, w)
        return time.perf_counter() - t0

    best: dict[str, float] = {}
    for kernel in sorted(available_cpu_kernels(), key=lambda k: k != "float"):  # float first: the yardstick
        try:
            _run(kernel, x, xf, w)  # warm-up: one-time costs (oneDNN code generation, FBGEMM packing)
        except Exception:  # noqa: BLE001 - a kernel this build cannot run is simply not chosen
            continue
        t = timed(kernel)
        if t <= 10 * min(best.values(), default=float("inf")):  # else far behind (int_mm without int8
            best[kernel] = t  # dot-product instructions): not worth timing further
    for _ in range(_CALIBRATION_ROUNDS):  # interleaved, so a noisy moment hits every kernel alike
        for kernel in best:
            best[kernel] = min(best[kernel], timed(kernel))
    return min(best, key=best.__getitem__)


def cpu_kernel() -> str:
    """The CPU kernel this process uses (measured on first use unless `set_cpu_kernel` fixed it)."""
    if _CPU_KERNEL[0] is None:
        _CPU_KERNEL[0] = _calibrate()
    return _CPU_KERNEL[0]


def set_cpu_kernel(kernel: str | None) -> None:
    """Fix the CPU kernel (one of CPU_KERNELS), or None to measure again on the next product."""
    if kernel is not None and kernel not in available_cpu_kernels():
        raise ValueError(f"CPU code-matmul kernel {kernel!r} is not available here; choose one of "
                         f"{available_cpu_kernels()}")
    _CPU_KERNEL[0] = kernel


def code_matmul(x_codes: torch.Tensor, w_codes: torch.Tensor, x_float: torch.Tensor | None = None) -> torch.Tensor:
    """Exact x_codes @ w_codes^T of int8 [M, K] and int8 [N, K]: int32 or fp32 [M, N] (integer values).

    `x_float`, if given, is x_codes as fp32 (the float kernels then skip converting it)."""
    m, k = x_codes.shape
    n = w_codes.shape[0]
    if x_codes.device.type == "cuda":
        kernel = "int_mm" if int_mm_takes(m, k, n, x_codes.device) else "float"
    elif x_codes.device.type == "cpu":
        kernel = cpu_kernel()
    else:
        kernel = "float"
    return _run(kernel, x_codes, x_float, w_codes)
