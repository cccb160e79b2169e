"""Swap nn.Linear modules for BitLinear by a name filter, and place the extra RMSNorms.

Quantization is a model conversion (as torchtitan's converters): build the full-precision model,
then replace every nn.Linear whose qualified name matches `include` and none of `exclude`
(fnmatch patterns; embeddings and lm_head are excluded by default). Parameters are reused, not
copied, so convert before creating the optimizer and before compiling or sharding.

Norm placement (SPEC section 1):
  subln       an RMSNorm on the input of o_proj and down_proj (BitNet b1.58 2B4T, BitDistill paper);
  all_linear  an RMSNorm on the input of every quantized linear (BitDistill's shipped configs,
              "An Extra RMSNorm is All You Need", transformers' use_rms_norm);
  none        weight and activation quantization only.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch.nn as nn

from bitnet_train.config import ConfigError, QuantConfig
from bitnet_train.quant.bitlinear import BitLinear

SUBLN_TARGETS = ("o_proj", "down_proj")
"""Leaf names that receive a sub-layer norm under `subln`."""


def _matches(name: str, patterns: list[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatchcase(name, p) or fnmatchcase(leaf, p) for p in patterns)


def wants_norm(name: str, placement: str) -> bool:
    if placement == "all_linear":
        return True
    if placement == "subln":
        return name.rsplit(".", 1)[-1] in SUBLN_TARGETS
    return False


def quantize_model(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """Replace matching nn.Linear modules of `model` in place; return the converted names."""
    if not cfg.enabled:
        return []
    targets = [
        name for name, module in model.named_modules()
        if type(module) is nn.Linear and _matches(name, cfg.include) and not _matches(name, cfg.exclude)
    ]
    if not targets:
        raise ConfigError(
            f"quant.include={cfg.include} / quant.exclude={cfg.exclude} match no nn.Linear in the model; "
            "widen quant.include or set quant.enabled=false")
    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, leaf)
        setattr(parent, leaf, BitLinear.from_linear(
            linear,
            weight_scale=cfg.weight_scale,
            activation_bits=cfg.activation_bits,
            input_norm=wants_norm(name, cfg.norm),
            norm_eps=cfg.norm_eps,
            weight_lambda=cfg.weight_lambda,
            activation_lambda=cfg.activation_lambda,
        ))
    return targets


def bitlinear_modules(model: nn.Module) -> dict[str, BitLinear]:
    """Every BitLinear in `model`, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


def set_lambda(model: nn.Module, weight: float | None = None, activation: float | None = None) -> None:
    """Set the phase-in strength of every BitLinear in `model`."""
    for module in bitlinear_modules(model).values():
        module.set_lambda(weight, activation)
