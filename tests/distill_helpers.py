"""Tiny random transformers teachers saved to a folder (no downloads), for the distillation tests."""

from __future__ import annotations

from pathlib import Path

import torch

SHAPE = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
"""Vocabulary of the shipped 4096-piece tokenizer, so the tests' data can be the shipped corpus."""


def make_teacher(folder: Path, kind: str = "qwen2", seed: int = 0, **shape) -> Path:
    """Save a randomly initialized Qwen2 (or Llama, Qwen3 with q/k norms) causal LM with `shape` to `folder` and return it.

    Weights are N(0, 0.1) (biases N(0, 0.1), norms U(0.5, 1.5)) so that logits and attention are far from
    uniform and nothing hides behind ones and zeros."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[kind]
    if kind == "qwen3":
        shape = {"head_dim": SHAPE["hidden_size"] // SHAPE["num_attention_heads"], **shape}
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**SHAPE, **shape}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(folder)
    return folder
