"""BitLinear: an nn.Linear that trains with ternary weights and 8-bit activations (BitNet b1.58).

forward(x) = linear(Q_a(norm(x)), Q_w(W)) + b, where
  norm  is the layer's own optional RMSNorm (init 1): this is how the `subln` placement (before
        o_proj and down_proj, BitNet b1.58 2B4T / BitDistill) and the `all_linear` placement
        ("An Extra RMSNorm is All You Need") are expressed;
  Q_w   is the per-matrix ternary quantizer (absmean or absmedian scale) and Q_a the per-token
        absmax quantizer, both with straight-through gradients (quant/functional.py);
  lambdas phase each quantizer in: 0 is full precision, 1 fully quantized; with both at 0 the
        quantizers are skipped, so a layer before its phase-in costs what an nn.Linear costs.
`input_norm_active = False` bypasses the input norm (schedules that add the norms at the
transition use it: before, the layer computes exactly the nn.Linear it replaced).
The latent weight stays in full precision and is what the optimizer updates.

BitNet a4.8 / v2 (docs/METHODS.md#bitnet-a48): `activation_scheme` names the layer's activation quantizer
(activation_schemes.py: int8_absmax, int4_absmean, int8_absmax_topNN; None is the b1.58 absmax at
`activation_bits`); the export records it and the runtime runs the same one. `scheme_active = False`
is the 8-bit first stage of two-stage training (int8_absmax whatever the scheme). `hadamard_block`
makes it BitNet v2's H-BitLinear: after the input norm the activation is rotated by the normalized
Hadamard transform (quant/hadamard.py; 0 = no rotation), as architecture, at every lambda.

Integer forward (quant/int_forward.py): with `int_matmul = "auto"` (the default; "off" falls back), a layer at both
lambdas 1 whose activation quantizer is the b1.58 int8 absmax multiplies int8 activation codes by
the ternary weight codes with int32 accumulation, and backward stays straight-through in the float
dtype; its weight codes are computed once per optimizer step (cached on the weight's version). The
layer's own input norm, when active and not followed by a Hadamard rotation, runs fused into that
function (`norm_int_bitlinear`: backward keeps x and its rstd, not the norm's output). Under FSDP2 the
forward sees the whole gathered weight: the latent one, quantized as in one process, or with
strategy.gather=codes / packed Q_w(W) itself, whose codes and scale are read back from it.
Anything else (phase-in, other schemes, `int_matmul = "off"`) runs the fake-quant path. In an eager
model the integer forward's elementwise work (activation codes, the fused norm, the epilogue, the
backward's dequantization, the weight codes) runs as fused kernels that torch.compile generates from
the same arithmetic (quant/fused_kernels.py); `fused_kernels = "off"` keeps them torch ops.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from bitnet_train.quant.code_matmul import cpu_kernel
from bitnet_train.quant.fused_kernels import FUSED_KERNEL_MODES
from bitnet_train.quant.functional import quantize_activation, quantize_activation_scheme, quantize_weight
from bitnet_train.quant.hadamard import hadamard_transform
from bitnet_train.quant.int_forward import (
    TernaryWeightCache,
    gathered_weight_codes,
    int_bitlinear,
    norm_int_bitlinear,
    ternary_weight_codes,
)
from bitnet_train.quant.norm import RMSNorm


INT_MATMUL_MODES = ("auto", "off")


class BitLinear(nn.Linear):
    """Linear layer with fake-quantized ternary weights and int8 per-token activations."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        weight_scale: str = "absmean",
        activation_bits: int = 8,
        input_norm: bool = False,
        norm_eps: float = 1e-5,
        weight_lambda: float = 1.0,
        activation_lambda: float = 1.0,
        activation_scheme: str | None = None,
        hadamard_block: int = 0,
        int_matmul: str = "auto",
        fused_kernels: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight_scale = weight_scale
        self.activation_bits = activation_bits
        self.activation_scheme = activation_scheme
        self.scheme_active = True
        self.hadamard_block = int(hadamard_block)
        self.weight_lambda = float(weight_lambda)
        self.activation_lambda = float(activation_lambda)
        self.input_norm = RMSNorm(in_features, eps=norm_eps, device=device, dtype=dtype) if input_norm else None
        self.input_norm_active = True
        if int_matmul not in INT_MATMUL_MODES:
            raise ValueError(f"int_matmul={int_matmul!r}; choose one of {INT_MATMUL_MODES}")
        self.int_matmul = int_matmul
        if fused_kernels not in FUSED_KERNEL_MODES:
            raise ValueError(f"fused_kernels={fused_kernels!r}; choose one of {FUSED_KERNEL_MODES}")
        self.fused_kernels = fused_kernels
        """auto: the integer forward's elementwise work runs as generated fused kernels in eager mode
        (quant/fused_kernels.py); off: as torch ops."""
        if int_matmul == "auto":
            cpu_kernel()  # times the CPU kernels once per process now, not inside a torch.compile trace
        self.weight_cache_enabled = True
        """False under FSDP2 (parallel/fsdp2.py): gathered codes are not kept between forwards."""
        self.weight_gathered_quantized = False
        """True under FSDP2 with strategy.gather=codes or packed (parallel/ternary_gather.py): inside forward the
        all-gathered weight already is Q_w(W): the integer forward reads its codes back, the fake-quant one
        multiplies it as it is."""
        self.fuse_input_norm = True
        """False runs the input norm as its own module before the integer forward (for comparisons)."""
        self.share_input_codes = True
        """False: the integer forward quantizes this layer's input itself even where the layer before it read the
        same tensor (quant/shared_codes.py; for comparisons)."""
        self._weight_cache = TernaryWeightCache()

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "BitLinear":
        """A BitLinear that reuses `linear`'s weight and bias Parameters (no copy)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)
        layer.weight = linear.weight
        if linear.bias is not None:
            layer.bias = linear.bias
        return layer

    def set_lambda(self, weight: float | None = None, activation: float | None = None) -> None:
        """Set the phase-in strengths (0 = full precision, 1 = fully quantized)."""
        if weight is not None and weight != 1 and self.weight_gathered_quantized:
            raise RuntimeError("this layer's weight is all-gathered as ternary codes (strategy.gather=codes or "
                               "packed), which holds only at weight lambda 1; run schedules that lower it with "
                               "strategy.gather=latent")
        if weight is not None:
            self.weight_lambda = float(weight)
        if activation is not None:
            self.activation_lambda = float(activation)

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it (ternary times gamma at lambda 1).

        gamma is a statistic of the whole matrix. Under FSDP2 and ZeRO-3 the forward pass sees the
        gathered weight; a sharded DTensor (outside forward) is gathered first, and a ZeRO-3
        placeholder is refused, so a scale is never computed on a shard (docs/METHODS.md#distributed-sharding).
        """
        w = self.weight
        if isinstance(w, DTensor):
            w = w.full_tensor()
        if w.shape != (self.out_features, self.in_features):
            raise RuntimeError(
                f"BitLinear({self.in_features}, {self.out_features}) sees a weight of shape {tuple(w.shape)}: a shard "
                "or a ZeRO-3 placeholder. Its scale needs the whole matrix: gather it first "
                "(bitnet_train.parallel.gather.gathered, or call the layer inside the model's forward)")
        return quantize_weight(w, self.weight_scale, self.weight_lambda)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Input norm, then the Hadamard rotation (H-BitLinear): what the quantizer sees."""
        if self.input_norm is not None and self.input_norm_active:
            x = self.input_norm(x)
        if self.hadamard_block:
            x = hadamard_transform(x, self.hadamard_block)
        return x

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_lambda == 0:
            return x
        if self.activation_scheme is None:
            return quantize_activation(x, self.activation_bits, self.activation_lambda)
        scheme = self.activation_scheme if self.scheme_active else "int8_absmax"
        return quantize_activation_scheme(x, scheme, self.activation_lambda)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The activation the quantized weight multiplies (for measurements such as activation sparsity)."""
        return self._quantize_input(self._prepare(x))

    def uses_int_matmul(self) -> bool:
        """Whether forward runs the integer matmul: int_matmul auto, both lambdas 1, int8 absmax input."""
        if self.int_matmul == "off" or self.weight_lambda != 1 or self.activation_lambda != 1:
            return False
        scheme = self.activation_scheme if self.scheme_active else None
        if scheme is None:
            return self.activation_bits == 8
        return scheme == "int8_absmax"

    def _int_forward_applies(self) -> bool:
        return self.uses_int_matmul() and not isinstance(self.weight, DTensor) \
            and self.weight.shape == (self.out_features, self.in_features)

    def _weight_codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fused_kernels == "auto"
        if self.weight_cache_enabled and w is self.weight and not hasattr(w, "ds_id"):
            return self._weight_cache.get(w, self.weight_scale, fused)
        return ternary_weight_codes(w, self.weight_scale, fused)

    def _fused_norm(self) -> bool:
        """Whether the integer forward takes the input norm in (active norm, no Hadamard rotation)."""
        return self.fuse_input_norm and self.input_norm is not None and self.input_norm_active \
            and not self.hadamard_block \
            and not isinstance(self.input_norm.weight, DTensor)

    def _gathered_quantized(self) -> bool:
        """Whether the weight is FSDP2's all-gathered Q_w(W) (strategy.gather=codes / packed, inside forward)."""
        return self.weight_gathered_quantized and not isinstance(self.weight, DTensor) \
            and not getattr(self.weight, "latent_for_code_gather", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gathered = self._gathered_quantized()
        if self._int_forward_applies():
            w_codes, inv = gathered_weight_codes(self.weight) if gathered else self._weight_codes(self.weight)
            fused = self.fused_kernels == "auto"
            if self._fused_norm():
                return norm_int_bitlinear(x, self.input_norm.weight, self.input_norm.eps, self.weight, self.bias,
                                          w_codes, inv, fused)
            return int_bitlinear(self._prepare(x), self.weight, self.bias, w_codes, inv, fused,
                                 self.share_input_codes)
        x = self._prepare(x)
        if gathered:
            return F.linear(self._quantize_input(x), self.weight, self.bias)
        if self.weight_lambda == 0 and self.activation_lambda == 0:
            return F.linear(x, self.weight, self.bias)
        return F.linear(self._quantize_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        norm = f", input_norm(eps={self.input_norm.eps})" if self.input_norm is not None else ""
        act = self.activation_scheme or f"a{self.activation_bits}"
        if self.activation_scheme is not None and not self.scheme_active:
            act += " (stage one: int8_absmax)"
        rot = f", hadamard({self.hadamard_block})" if self.hadamard_block else ""
        rot += ", int_matmul=off" if self.int_matmul == "off" else ""
        rot += ", fused_kernels=off" if self.int_matmul != "off" and self.fused_kernels == "off" else ""
        return (f"{super().extra_repr()}, weight_scale={self.weight_scale}, {act}{rot}{norm}, "
                f"lambda(w={self.weight_lambda:g}, a={self.activation_lambda:g})")
