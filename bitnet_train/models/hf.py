"""Map between transformers causal-LM checkpoints (Llama, Qwen2, Qwen3, BitNet) and our decoder.

Our module names are transformers' Llama names, with two differences that come from BitLinear
owning its input norm:
  BitNet  model.layers.N.self_attn.attn_sub_norm  <->  model.layers.N.self_attn.o_proj.input_norm
          model.layers.N.mlp.ffn_sub_norm         <->  model.layers.N.mlp.down_proj.input_norm
  AutoBitLinear(use_rms_norm=True) ....X_proj.rms_norm  <->  ....X_proj.input_norm  (all_linear)
`model_config_from_hf` reads a transformers config into our ModelConfig and refuses what the
decoder cannot mirror (sliding windows, rope scaling, partial rotary, ...), naming the field.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from bitnet_train.config import ConfigError, ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "bitnet", "mistral")

_TO_HF = [
    (re.compile(r"\.self_attn\.o_proj\.input_norm\."), ".self_attn.attn_sub_norm."),
    (re.compile(r"\.mlp\.down_proj\.input_norm\."), ".mlp.ffn_sub_norm."),
]
_FROM_HF = [
    (re.compile(r"\.self_attn\.attn_sub_norm\."), ".self_attn.o_proj.input_norm."),
    (re.compile(r"\.mlp\.ffn_sub_norm\."), ".mlp.down_proj.input_norm."),
    (re.compile(r"_proj\.rms_norm\."), "_proj.input_norm."),
]


def _rename(name: str, rules) -> str:
    for pattern, repl in rules:
        name = pattern.sub(repl, name)
    return name


def to_hf_state_dict(state: dict[str, torch.Tensor], sub_norm_names: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers names (BitNet sub-norm names when `sub_norm_names`)."""
    if not sub_norm_names:
        return {k.replace(".input_norm.", ".rms_norm."): v for k, v in state.items()}
    out = {_rename(k, _TO_HF): v for k, v in state.items()}
    return {k.replace(".input_norm.", ".rms_norm."): v for k, v in out.items()}


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers state dict -> our names (drops rotary buffers)."""
    return {_rename(k, _FROM_HF): v for k, v in state.items() if "rotary_emb" not in k}


def _rope_theta(hf: Any) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_type" in params and params["rope_type"] not in ("default", None):
        raise ConfigError(
            f"{hf.model_type} uses rope_type={params['rope_type']!r}; the decoder implements only default RoPE")
    if isinstance(params, dict) and params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{hf.model_type} uses partial rotary embeddings, which the decoder does not implement")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    theta = theta if theta is not None else getattr(hf, "rope_theta", None)
    if theta is None:
        raise ConfigError(f"{hf.model_type} config has no rope_theta")
    return float(theta)


def model_config_from_hf(hf: Any) -> ModelConfig:
    """Our ModelConfig for a transformers PretrainedConfig, or ConfigError naming what cannot be mirrored."""
    model_type = getattr(hf, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type={model_type!r} cannot be mirrored by the decoder; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    act = getattr(hf, "hidden_act", "silu")
    if act not in ("silu", "relu2"):
        raise ConfigError(f"{model_type} uses hidden_act={act!r}; the decoder supports silu and relu2")
    if getattr(hf, "use_sliding_window", False) or (model_type == "mistral" and getattr(hf, "sliding_window", None)):
        raise ConfigError(f"{model_type} uses sliding-window attention, which the decoder does not implement")
    qkv_bias = model_type == "qwen2" or bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        num_key_value_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        hidden_act=act,
        rms_norm_eps=hf.rms_norm_eps,
        rope_theta=_rope_theta(hf),
        max_position_embeddings=hf.max_position_embeddings,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        attention_out_bias=model_type != "qwen2" and bool(getattr(hf, "attention_bias", False)),
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        initializer_range=getattr(hf, "initializer_range", 0.02),
    )


def load_hf_weights(model: torch.nn.Module, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy a transformers state dict into our model (converted or not), strictly by name."""
    state = from_hf_state_dict(hf_state)
    ours = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    missing = sorted(k for k in ours if k not in state and not _tied_head(model, k))
    unexpected = sorted(k for k in state if k not in ours)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint does not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    with torch.no_grad():
        for name, tensor in state.items():
            ours[name].copy_(tensor.to(ours[name].dtype))


def _tied_head(model: torch.nn.Module, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)
