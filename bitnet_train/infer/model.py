"""Build a runnable decoder from a native export (export/native.py).

The decoder is the training one (models/decoder.py, with its KV cache), built on the meta device
so that no full-precision projection weight is ever allocated; each quantized projection becomes a
TernaryLinear holding the packed weights, every other tensor (embeddings, norms, head) is loaded as
stored. Projection scales stay fp32; everything else takes `dtype`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bitnet_train.export.native import NativeModel, read_native
from bitnet_train.infer.linear import TernaryLinear
from bitnet_train.models.decoder import CausalLM, RotaryEmbedding
from bitnet_train.quant.norm import RMSNorm


def build_runtime(native: NativeModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  backend: str = "auto") -> CausalLM:
    cfg = native.model_cfg
    with torch.device("meta"):
        model = CausalLM(cfg)
    for name, layer in native.layers.items():
        parent_name, _, leaf = name.rpartition(".")
        norm = None
        if layer.norm_weight is not None:
            norm = RMSNorm(layer.in_features, eps=float(native.quant["norm_eps"]))
            norm.weight.data = layer.norm_weight.to(dtype)
        bias = None if layer.bias is None else layer.bias.to(dtype)
        setattr(model.get_submodule(parent_name), leaf, TernaryLinear(
            layer.in_features, layer.out_features, layer.packed, layer.scale, bias, norm, layer.activation, backend,
            layer.hadamard_block))
    model.load_state_dict({k: v.to(dtype) for k, v in native.dense.items()}, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
    model.set_kv_bits(native.quant.get("kv_bits"))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"runtime model has tensors without data: {left[:3]}")
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               backend: str = "auto"):
    """(runtime model, tokenizer, NativeModel) of a native export file."""
    native = read_native(path)
    return build_runtime(native, device, dtype, backend), native.tokenizer, native
