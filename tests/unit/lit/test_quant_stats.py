"""QuantStatsCallback reports zero fractions, flips since the last log, and gamma per layer."""

from __future__ import annotations

import torch

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.lit.callbacks import QuantStatsCallback
from bitnet_train.models import CausalLM
from bitnet_train.quant import quantize_model


def test_stats_and_flips():
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2))
    quantize_model(model, QuantConfig())
    cb = QuantStatsCallback(every_n_steps=1)
    first = cb.stats(model)
    q = model.model.layers[0].self_attn.q_proj
    w = q.weight.detach()
    gamma = w.abs().mean()
    expected_zero = ((w / gamma).round().clamp(-1, 1) == 0).float().mean().item()
    assert first["quant/model.layers.0.self_attn.q_proj/zero_frac"] == expected_zero
    assert abs(first["quant/model.layers.0.self_attn.q_proj/gamma"] - gamma.item()) < 1e-7
    assert "quant/flip_frac" not in first  # nothing to compare with yet

    with torch.no_grad():
        q.weight.neg_()  # every non-zero code flips sign, zeros stay
    second = cb.stats(model)
    assert abs(second["quant/model.layers.0.self_attn.q_proj/flip_frac"] - (1 - expected_zero)) < 1e-7
    assert second["quant/model.layers.0.mlp.up_proj/flip_frac"] == 0.0
