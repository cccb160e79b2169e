"""The transformers export: a folder that `AutoModelForCausalLM.from_pretrained` loads, packed ternary.

Which class (docs/METHODS.md#transformers-export):
- norm placement `subln` -> `BitNetForCausalLM` (attn_sub_norm / ffn_sub_norm), the layout of
  microsoft/bitnet-b1.58-2B-4T's packed checkpoint;
- `none` -> `LlamaForCausalLM` (Qwen3ForCausalLM with q/k norms, Qwen2ForCausalLM with q/k/v-only
  biases) with transformers' BitNet quantization, each projection a `BitLinear`;
- `all_linear` -> the same, with the quantization config's `use_rms_norm` (the norm each
  BitLinear applies to its input, our `input_norm`).
quantization_config = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode":
"offline"}. Each projection's `weight` is uint8 [out/4, in] (kernels/packing.py `pack_hf`) and its
`weight_scale` [1] is 1/gamma, as the quantizer computed it: transformers' `bitlinear` divides the
integer product by it (and by the activation scale). Linears left in full precision are listed in
`modules_to_not_convert`. A full-precision checkpoint (quant.enabled=false) is written as the plain
model of its family (no quantization_config), e.g. a teacher for BitDistill. Tokenizer files, generation_config.json and a Hub model card (README.md) are written beside the
model (export/tokenizer_files.py, export/model_card.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch

from bitnet_train.config import ConfigError
from bitnet_train.export.native import DTYPES
from bitnet_train.export.source import Source
from bitnet_train.export.ternary import dense_tensors, ternary_layers
from bitnet_train.export.model_card import write_generation_config, write_model_card
from bitnet_train.export.tokenizer_files import save_transformers_tokenizer
from bitnet_train.kernels.packing import pack_hf
from bitnet_train.models.hf import to_hf_state_dict

QUANT_BASE = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}


def choose_family(source: Source) -> str:
    """'bitnet', 'llama', 'qwen2' or 'qwen3' for the model, or ConfigError naming what does not fit."""
    m, q = source.model_cfg, source.quant_cfg
    if q.enabled and q.norm == "subln":
        problems = []
        if m.qk_norm:
            problems.append("q/k norms (model.qk_norm=true)")
        if m.mlp_bias:
            problems.append("MLP biases")
        if m.attention_bias != m.attention_out_bias:
            problems.append("biases on q/k/v but not o_proj (or the reverse)")
        if m.num_attention_heads * m.head_dim != m.hidden_size:
            problems.append(f"heads * head_dim = {m.num_attention_heads * m.head_dim} != hidden_size {m.hidden_size}")
        if q.norm_eps != m.rms_norm_eps:
            problems.append(f"sub-norm eps {q.norm_eps} != model.rms_norm_eps {m.rms_norm_eps}")
        if problems:
            raise ConfigError("transformers' BitNetForCausalLM (norm placement subln) cannot hold this model: "
                              + "; ".join(problems))
        return "bitnet"
    if m.qk_norm:
        if m.attention_bias != m.attention_out_bias or m.mlp_bias:
            raise ConfigError("a model with q/k norms exports as Qwen3ForCausalLM, which has either all four "
                              "attention biases or none, and no MLP bias")
        return "qwen3"
    if m.attention_bias and not m.attention_out_bias:
        if m.mlp_bias:
            raise ConfigError("Qwen2ForCausalLM (q/k/v biases) has no MLP bias; this model cannot be exported to transformers")
        return "qwen2"
    if m.attention_bias != m.attention_out_bias:
        raise ConfigError("a bias on o_proj without q/k/v biases has no transformers class; export to native instead")
    return "llama"


def _hf_config(source: Source, family: str, not_converted: list[str], dtype: str):
    from transformers import BitNetConfig, LlamaConfig, Qwen2Config, Qwen3Config

    m, q, tok = source.model_cfg, source.quant_cfg, source.tokenizer
    quant = dict(QUANT_BASE, modules_to_not_convert=not_converted)
    if q.norm == "all_linear":
        quant.update(use_rms_norm=True, rms_norm_eps=q.norm_eps)
    if not q.enabled:
        quant = None  # a full-precision model: plain transformers linears
    common = dict(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, hidden_act=m.hidden_act, rms_norm_eps=m.rms_norm_eps,
        max_position_embeddings=m.max_position_embeddings, tie_word_embeddings=m.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta}, initializer_range=m.initializer_range,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        attention_bias=m.attention_bias, **({"quantization_config": quant} if quant is not None else {}))
    if family == "bitnet":
        config = BitNetConfig(**common)
    elif family == "llama":
        config = LlamaConfig(**common, head_dim=m.head_dim, mlp_bias=m.mlp_bias)
    elif family == "qwen2":
        config = Qwen2Config(**{**common, "attention_bias": True})
    else:
        config = Qwen3Config(**common, head_dim=m.head_dim)
    config.dtype = dtype
    config.architectures = [{"bitnet": "BitNetForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                             "qwen3": "Qwen3ForCausalLM"}[family]]
    return config


def hf_state_dict(source: Source, family: str, dtype: torch.dtype,
                  progress: Callable[[Iterable], Iterable] = lambda x: x) -> dict[str, torch.Tensor]:
    layers = ternary_layers(source.model)
    state: dict[str, torch.Tensor] = {}
    for name in progress(list(layers)):
        layer = layers[name]
        if layer.activation != "int8_absmax":
            raise ConfigError(f"layer {name} uses activation scheme {layer.activation}; transformers' BitLinear "
                              "quantizes activations to int8 absmax only (export to native instead)")
        if layer.hadamard_block:
            raise ConfigError(f"layer {name} rotates its input by a Hadamard transform (BitNet v2), which transformers' "
                              "BitLinear does not do (export to native instead)")
        state[f"{name}.weight"] = pack_hf(layer.codes)
        state[f"{name}.weight_scale"] = layer.inv_scale.to(dtype)
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.to(dtype)
        if layer.norm_weight is not None:
            state[f"{name}.input_norm.weight"] = layer.norm_weight.to(dtype)
    for key, tensor in dense_tensors(source.model).items():
        state[key] = tensor.to(dtype)
    return {k: v.contiguous() for k, v in to_hf_state_dict(state, sub_norm_names=family == "bitnet").items()}


def write_hf(source: Source, out: str | Path, dtype: str = "float32",
             progress: Callable[[Iterable], Iterable] = lambda x: x) -> Path:
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    family = choose_family(source)
    if not source.quant_cfg.enabled:
        return _write_full_precision(source, family, out, dtype)
    if source.quant_cfg.kv_bits is not None:
        warnings.warn(f"quant.kv_bits={source.quant_cfg.kv_bits}: transformers keeps keys and values in full precision "
                      "(the native export keeps the low-bit KV cache)", stacklevel=2)
    layers = ternary_layers(source.model)
    bad = [n for n, t in layers.items() if t.out_features % 4]
    if bad:
        raise ConfigError(f"transformers packs 4 output rows per byte: {bad[0]} has {layers[bad[0]].out_features} "
                          "outputs, not a multiple of 4")
    not_converted = ["lm_head"] + sorted(
        name for name, mod in source.model.named_modules() if type(mod) is torch.nn.Linear and name != "lm_head")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _hf_config(source, family, not_converted, dtype).save_pretrained(str(out))
    save_file(hf_state_dict(source, family, DTYPES[dtype], progress), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    save_transformers_tokenizer(source.tokenizer, source.tokenizer_path, out)
    write_generation_config(source, out)
    write_model_card(source, out, _hf_config_class(family))
    return out


def _write_full_precision(source: Source, family: str, out: str | Path, dtype: str) -> Path:
    """A full-precision checkpoint (quant.enabled=false) as the plain transformers model of its family, e.g.
    a teacher trained here for BitDistill (distill.teacher=FOLDER)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _hf_config(source, family, [], dtype).save_pretrained(str(out))
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in source.model.state_dict().items()
             if not (k == "lm_head.weight" and source.model_cfg.tie_word_embeddings)}
    save_file(to_hf_state_dict(state, sub_norm_names=False), str(out / "model.safetensors"), metadata={"format": "pt"})
    save_transformers_tokenizer(source.tokenizer, source.tokenizer_path, out)
    write_generation_config(source, out)
    write_model_card(source, out, _hf_config_class(family))
    return out


def _hf_config_class(family: str) -> str:
    return {"bitnet": "BitNetForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}[family]
