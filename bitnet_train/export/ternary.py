"""From a quantized model to what every export format needs: ternary codes, scales, the other tensors.

For each BitLinear the codes are q = clamp(round(W * (1/gamma)), -1, 1) and the scale is
s = 1 / (1/gamma) in fp32, gamma the layer's absmean (or absmedian) scale: exactly the arithmetic of
the training-time quantizer (quant/functional.py), so that q * s reproduces the fake-quantized
weight the model trained with bit for bit. `ternary_layers` checks this for every layer.

The activation scheme of a projection is read from the layer: BitLinear's `activation_bits=8` is
`int8_absmax` (b1.58). A layer that declares `activation_scheme` (a string the runtime knows,
infer/activations.py: `int4_absmean`, `int8_absmax_top50` for BitNet a4.8) exports that instead.
A BitNet v2 H-BitLinear also records its Hadamard block size (`hadamard_block`, 0 for none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitnet_train.config import ConfigError
from bitnet_train.activation_schemes import is_known_scheme
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.quant.functional import weight_scale


@dataclass
class TernaryLayer:
    """One quantized projection."""

    name: str
    codes: torch.Tensor
    """int8 [out, in] in {-1, 0, 1}."""
    scale: torch.Tensor
    """fp32 [1]: the weight is codes * scale."""
    inv_scale: torch.Tensor
    """fp32 [1]: 1/gamma as the quantizer computed it (transformers' `bitlinear` divides by this)."""
    activation: str
    bias: torch.Tensor | None
    norm_weight: torch.Tensor | None
    norm_eps: float | None
    hadamard_block: int = 0
    """BitNet v2: the input is rotated by the Hadamard transform with this block size (0: not rotated)."""

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]


def activation_scheme(module: BitLinear, name: str) -> str:
    declared = getattr(module, "activation_scheme", None)
    if isinstance(declared, str):
        if not is_known_scheme(declared):
            raise ConfigError(f"layer {name} declares activation scheme {declared!r}, which the runtime does not know")
        return declared
    if module.activation_bits == 8:
        return "int8_absmax"
    raise ConfigError(f"layer {name} quantizes activations to {module.activation_bits} bits, which has no "
                      "exported scheme; export supports int8_absmax, int4_absmean, int8_absmax_topNN")


@torch.no_grad()
def ternary_layer(name: str, module: BitLinear) -> TernaryLayer:
    w = module.weight.detach().float()
    inv = 1.0 / weight_scale(w, module.weight_scale)
    codes = (w * inv).round().clamp(-1, 1)
    scale = (1.0 / inv).reshape(1)
    if not torch.equal(codes * scale, module.quantized_weight().detach().float()):
        raise RuntimeError(f"ternary codes of {name} do not reproduce its quantized weight (is lambda < 1?)")
    norm = module.input_norm
    return TernaryLayer(
        name=name,
        codes=codes.to(torch.int8),
        scale=scale.float(),
        inv_scale=inv.reshape(1).float(),
        activation=activation_scheme(module, name),
        bias=None if module.bias is None else module.bias.detach().clone(),
        norm_weight=None if norm is None else norm.weight.detach().clone(),
        norm_eps=None if norm is None else float(norm.eps),
        hadamard_block=int(getattr(module, "hadamard_block", 0)),
    )


def ternary_layers(model: torch.nn.Module) -> dict[str, TernaryLayer]:
    """Every BitLinear of `model` as a TernaryLayer, by qualified name (model at lambda 1)."""
    return {name: ternary_layer(name, module) for name, module in bitlinear_modules(model).items()}


def dense_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model that is not part of a BitLinear (embeddings, norms, head, biases of
    full-precision linears), by state-dict name; a tied lm_head is left out."""
    quantized = tuple(f"{name}." for name in bitlinear_modules(model))
    out = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(quantized):
            continue
        if key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        out[key] = tensor.detach()
    return out
