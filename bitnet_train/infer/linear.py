"""TernaryLinear: the inference-time BitLinear, with packed 2-bit weights and integer matmul.

forward(x) = ternary_matmul(Q_a(H(norm(x))), W_packed) * scales + bias: the optional input RMSNorm
(sub-norm / all-linear placement), BitNet v2's Hadamard rotation where the layer has one
(quant/hadamard.py, the same transform as training), per-token activation quantization under the
layer's scheme (infer/activations.py), then the W2A8 matmul from bitnet_train.kernels (Triton on CUDA, the torch
reference elsewhere). On the torch path the unpacked int8 weight is kept after first use (one byte
per weight) so that decoding does not unpack every step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bitnet_train.infer.activations import encode_activation
from bitnet_train.kernels.dispatch import resolve_backend, ternary_matmul
from bitnet_train.kernels.packing import unpack_k2
from bitnet_train.kernels.reference import epilogue, int_matmul
from bitnet_train.quant.hadamard import hadamard_transform
from bitnet_train.quant.norm import RMSNorm


class TernaryLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, packed: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None = None, input_norm: RMSNorm | None = None,
                 activation: str = "int8_absmax", backend: str = "auto", hadamard_block: int = 0) -> None:
        super().__init__()
        if packed.shape != (out_features, -(-in_features // 4)) or packed.dtype != torch.uint8:
            raise ValueError(f"packed weight must be uint8 [{out_features}, {-(-in_features // 4)}], "
                             f"got {packed.dtype} {tuple(packed.shape)}")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", packed)
        self.register_buffer("weight_scale", weight_scale.reshape(1).float())
        self.register_buffer("bias", bias)
        self.input_norm = input_norm
        self.activation = activation
        self.backend = backend
        self.hadamard_block = int(hadamard_block)
        self._codes_t: torch.Tensor | None = None

    def _unpacked_t(self) -> torch.Tensor:
        if self._codes_t is None or self._codes_t.device != self.packed.device:
            self._codes_t = unpack_k2(self.packed, self.in_features).t().contiguous()
        return self._codes_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            x = self.input_norm(x)
        if self.hadamard_block:
            x = hadamard_transform(x, self.hadamard_block)
        lead = x.shape[:-1]
        codes, mult = encode_activation(x.reshape(-1, self.in_features), self.activation)
        if resolve_backend(self.backend, x.device) == "torch":
            y = epilogue(int_matmul(codes, self._unpacked_t()), mult, self.weight_scale, x.dtype)
        else:
            y = ternary_matmul(codes, mult, self.packed, self.weight_scale, self.in_features, x.dtype, self.backend)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        norm = ", input_norm" if self.input_norm is not None else ""
        rot = f", hadamard({self.hadamard_block})" if self.hadamard_block else ""
        return f"{self.in_features}, {self.out_features}, {self.activation}{rot}{norm}, backend={self.backend}"
