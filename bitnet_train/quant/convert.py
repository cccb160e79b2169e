"""Swap nn.Linear modules for BitLinear by a name filter, and place the extra RMSNorms.

Quantization is a model conversion (as torchtitan's converters): build the full-precision model,
then replace every nn.Linear whose qualified name matches `include` and none of `exclude`
(fnmatch patterns; embeddings and lm_head are excluded by default). Parameters are reused, not
copied, so convert before creating the optimizer and before compiling or sharding.

Norm placement (docs/METHODS.md#norm-placement):
  subln       an RMSNorm on the input of o_proj and down_proj (BitNet b1.58 2B4T, BitDistill paper);
  all_linear  an RMSNorm on the input of every quantized linear (BitDistill's shipped configs,
              "An Extra RMSNorm is All You Need", transformers' use_rms_norm);
  none        weight and activation quantization only.

Activation schemes and rotations (docs/METHODS.md#bitnet-a48, docs/METHODS.md#bitnet-v2-h-bitlinear): each converted layer takes the first scheme of
`quant.activation_schemes` whose pattern matches its name (BitNet a4.8: INT4 into q/k/v and gate/up,
top-K 50% + INT8 into o_proj, INT8 into down_proj), and layers matching `quant.hadamard` become BitNet
v2's H-BitLinear (their input size, or quant.hadamard_block, must be a power of two: checked here).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
import torch.nn as nn

from bitnet_train.config import ConfigError, QuantConfig
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.hadamard import check_hadamard_size

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


def activation_scheme_for(name: str, cfg: QuantConfig) -> str | None:
    """The configured activation scheme of layer `name` (None: the b1.58 int8 absmax)."""
    for pattern, scheme in cfg.activation_schemes.items():
        if _matches(name, [pattern]):
            return scheme
    return None


def hadamard_block_for(name: str, in_features: int, cfg: QuantConfig) -> int:
    """The Hadamard block size of layer `name` (0: no rotation); ConfigError for an unusable size."""
    if not _matches(name, cfg.hadamard):
        return 0
    return check_hadamard_size(in_features, cfg.hadamard_block, f"H-BitLinear {name}")


def quantize_model(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """Replace matching nn.Linear modules of `model` in place; return the converted names.
    Also sets the decoder's key/value quantization (quant.kv_bits), which does not depend on quant.enabled."""
    if cfg.kv_bits is not None and hasattr(model, "set_kv_bits"):
        model.set_kv_bits(cfg.kv_bits)
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
    for key, patterns in (("hadamard", cfg.hadamard), ("activation_schemes", list(cfg.activation_schemes))):
        unused = [p for p in patterns if not any(_matches(name, [p]) for name in targets)]
        if unused:
            raise ConfigError(f"quant.{key} pattern {unused[0]!r} matches no quantized linear; use projection names "
                              "such as q_proj, o_proj, down_proj (or full module names)")
    # every layer's settings first, so that a bad size fails before the model is touched
    settings = {name: dict(activation_scheme=activation_scheme_for(name, cfg),
                           hadamard_block=hadamard_block_for(name, model.get_submodule(name).in_features, cfg))
                for name in targets}
    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = BitLinear.from_linear(
            getattr(parent, leaf),
            weight_scale=cfg.weight_scale,
            activation_bits=cfg.activation_bits,
            input_norm=wants_norm(name, cfg.norm),
            norm_eps=cfg.norm_eps,
            weight_lambda=cfg.weight_lambda,
            activation_lambda=cfg.activation_lambda,
            int_matmul=cfg.int_matmul,
            fused_kernels=cfg.fused_kernels,
            **settings[name],
        )
        if layer.input_norm is not None:
            with torch.no_grad():
                layer.input_norm.weight.fill_(cfg.norm_gain_init)
        setattr(parent, leaf, layer)
    return targets


def bitlinear_modules(model: nn.Module) -> dict[str, BitLinear]:
    """Every BitLinear in `model`, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


def set_lambda(model: nn.Module, weight: float | None = None, activation: float | None = None) -> None:
    """Set the phase-in strength of every BitLinear in `model`."""
    for module in bitlinear_modules(model).values():
        module.set_lambda(weight, activation)


def set_activation_stage(model: nn.Module, schemes_active: bool) -> None:
    """Two-stage training: False runs every BitLinear with int8_absmax (stage one), True with its scheme."""
    for module in bitlinear_modules(model).values():
        module.scheme_active = schemes_active
