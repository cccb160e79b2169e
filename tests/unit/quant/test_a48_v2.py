"""BitNet a4.8 and v2 as configuration: per-projection schemes, H-BitLinear placement, the 8-bit first
stage, and a4.8 with every scheme set back to INT8 being exactly b1.58."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from bitnet_train.config import ConfigError, ModelConfig, QuantConfig, from_mapping
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import bitlinear_modules, quantize_model, set_activation_stage

SHAPE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def preset(name: str, *overrides: str) -> QuantConfig:
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"quant={name}", *overrides])
    return from_mapping(QuantConfig, "quant", cfg.quant)


def model(quant: QuantConfig, seed: int = 0, **shape) -> CausalLM:
    torch.manual_seed(seed)
    m = CausalLM(ModelConfig(**{**SHAPE, **shape}))
    with torch.no_grad():  # spread-out weights and norms, so that quantizer differences show in the logits
        for name, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in name else torch.randn_like(p) * 0.1)
    quantize_model(m, quant)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "input_norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return m


def ids() -> torch.Tensor:
    return torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(1))


def test_a48_assigns_the_papers_schemes():
    layers = bitlinear_modules(model(preset("a48")))
    expected = {"q_proj": "int4_absmean", "k_proj": "int4_absmean", "v_proj": "int4_absmean",
                "o_proj": "int8_absmax_top50", "gate_proj": "int4_absmean", "up_proj": "int4_absmean",
                "down_proj": "int8_absmax"}
    assert len(layers) == 14
    for name, layer in layers.items():
        assert layer.activation_scheme == expected[name.rsplit(".", 1)[-1]] and layer.hadamard_block == 0


def test_v2_rotates_o_and_down_and_v2_a4_is_int4_everywhere():
    for name, layer in bitlinear_modules(model(preset("v2_a8"))).items():
        leaf = name.rsplit(".", 1)[-1]
        assert layer.hadamard_block == (layer.in_features if leaf in ("o_proj", "down_proj") else 0)
        assert layer.activation_scheme is None
    assert {layer.activation_scheme for layer in bitlinear_modules(model(preset("v2_a4"))).values()} == {"int4_absmean"}
    blocked = bitlinear_modules(model(preset("v2_a8", "quant.hadamard_block=16"), intermediate_size=48))
    assert blocked["model.layers.0.mlp.down_proj"].hadamard_block == 16


def test_a48_with_every_scheme_back_to_int8_equals_b158():
    b158 = model(preset("b158"))
    back = preset("a48", *[f"quant.activation_schemes.{p}=int8_absmax" for p in PROJECTIONS])
    assert set(back.activation_schemes.values()) == {"int8_absmax"}
    a48_int8, a48 = model(back), model(preset("a48"))
    x = ids()
    ref = b158(x)
    assert torch.equal(a48_int8(x), ref)
    # the 8-bit first stage of two-stage training is b1.58 too ...
    set_activation_stage(a48, False)
    assert torch.equal(a48(x), ref)
    # ... and gradients agree as well
    ref.square().mean().backward()
    a48(x).square().mean().backward()
    for (n, p), (_, q) in zip(b158.named_parameters(), a48.named_parameters()):
        assert torch.equal(p.grad, q.grad), n
    # while the hybrid scheme itself computes something else
    set_activation_stage(a48, True)
    assert not torch.allclose(a48(x), ref, atol=1e-3)


def test_bad_settings_fail_before_compute():
    with pytest.raises(ConfigError, match="quant.activation_schemes.o_proj='int3'"):
        preset("a48", "quant.activation_schemes.o_proj=int3")
    with pytest.raises(ConfigError, match="matches no quantized linear"):
        model(preset("b158", "+quant.activation_schemes.oproj=int4_absmean"))
    with pytest.raises(ConfigError, match="needs a power-of-two input size, got 48"):
        model(preset("v2_a8"), intermediate_size=48)
    with pytest.raises(ConfigError, match="nothing would change"):
        preset("b158", "quant.activation_schemes_at=0.5")
    with pytest.raises(ConfigError, match="activation_schemes_at=1.5"):
        preset("a48", "quant.activation_schemes_at=1.5")
    with pytest.raises(ConfigError, match="kv_bits=9"):
        preset("a48", "quant.kv_bits=9")
    assert preset("a48", "quant.activation_schemes_at=0.95").activation_stage_step(200) == 190
