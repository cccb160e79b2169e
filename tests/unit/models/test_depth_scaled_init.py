"""model.depth_scaled_init: the residual branches' output projections start smaller, everything else as before."""

from __future__ import annotations

import math

import torch

from bitnet_train.config import ModelConfig
from bitnet_train.models.decoder import CausalLM

SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=8, num_attention_heads=4)


def _stds(model: CausalLM) -> dict[str, float]:
    return {name: float(p.std()) for name, p in model.named_parameters() if name.endswith("proj.weight")}


def test_output_projections_start_at_std_over_sqrt_two_layers():
    torch.manual_seed(0)
    plain = _stds(CausalLM(ModelConfig(**SHAPE)))
    torch.manual_seed(0)
    scaled = _stds(CausalLM(ModelConfig(**SHAPE, depth_scaled_init=True)))
    expected = 0.02 / math.sqrt(2 * 8)
    for name, std in scaled.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert abs(std - expected) < 0.1 * expected, (name, std)
            assert abs(plain[name] - 0.02) < 0.002
        else:
            assert abs(std - 0.02) < 0.002 and abs(std - plain[name]) < 0.002, name
