"""quantize_model swaps exactly the filtered nn.Linear layers, places norms, and leaves embeddings/lm_head alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitnet_train.config import ConfigError, ModelConfig, QuantConfig
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.convert import bitlinear_modules, quantize_model, set_lambda

PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _model(tied: bool = True, layers: int = 2) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def _all_proj(layers: int = 2) -> list[str]:
    return [f"model.layers.{i}.{p}" for i in range(layers) for p in PROJ]


@pytest.mark.parametrize("tied", [True, False])
def test_default_converts_every_projection_and_nothing_else(tied):
    model = _model(tied)
    embed, head = model.model.embed_tokens, model.lm_head
    params_before = {n: p for n, p in model.named_parameters()}
    converted = quantize_model(model, QuantConfig())
    assert sorted(converted) == sorted(_all_proj())
    assert sorted(bitlinear_modules(model)) == sorted(_all_proj())
    # embeddings and head: untouched modules of their original types, same Parameters
    assert model.model.embed_tokens is embed and type(embed) is nn.Embedding
    assert model.lm_head is head and type(head) is nn.Linear
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    # every pre-existing Parameter is still in the model, as the same object (no copies)
    params_after = {n: p for n, p in model.named_parameters()}
    for name, p in params_before.items():
        assert params_after[name] is p
    # no plain nn.Linear left but the head
    plain = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert plain == ["lm_head"]


def test_converted_model_still_runs_and_backprops():
    model = _model()
    quantize_model(model, QuantConfig())
    ids = torch.randint(0, 50, (2, 6))
    logits = model(ids)
    assert logits.shape == (2, 6, 50)
    logits.logsumexp(-1).mean().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.layers[1].mlp.down_proj.input_norm.weight.grad.abs().sum() > 0


def test_tied_embedding_stays_tied_through_training_step():
    model = _model(tied=True)
    quantize_model(model, QuantConfig())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randint(0, 50, (2, 5))).sum().backward()
    opt.step()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_include_patterns():
    model = _model()
    converted = quantize_model(model, QuantConfig(include=["*.mlp.*"]))
    assert sorted(converted) == sorted(n for n in _all_proj() if ".mlp." in n)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    # a leaf name works as a pattern too
    model = _model()
    assert sorted(quantize_model(model, QuantConfig(include=["q_proj", "v_proj"]))) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_exclude_patterns():
    model = _model()
    converted = quantize_model(model, QuantConfig(exclude=["lm_head", "*embed_tokens*", "model.layers.0.*"]))
    assert sorted(converted) == sorted(n for n in _all_proj() if n.startswith("model.layers.1."))
    assert not any(isinstance(m, BitLinear) for m in model.model.layers[0].modules())
    # excluding nothing quantizes the head as well (when asked to)
    model = _model(tied=False)
    converted = quantize_model(model, QuantConfig(exclude=[]))
    assert "lm_head" in converted and isinstance(model.lm_head, BitLinear)


def test_subln_norms_exactly_on_o_proj_and_down_proj():
    model = _model()
    quantize_model(model, QuantConfig(norm="subln", norm_eps=1e-8))
    with_norm = sorted(n for n, m in bitlinear_modules(model).items() if m.input_norm is not None)
    assert with_norm == sorted(n for n in _all_proj() if n.endswith(("o_proj", "down_proj")))
    o = model.model.layers[0].self_attn.o_proj
    d = model.model.layers[0].mlp.down_proj
    assert o.input_norm.weight.shape == (o.in_features,) and d.input_norm.weight.shape == (48,)
    assert o.input_norm.eps == 1e-8
    assert torch.equal(o.input_norm.weight, torch.full((o.in_features,), QuantConfig().norm_gain_init))


def test_all_linear_norm_on_every_converted_linear():
    model = _model()
    quantize_model(model, QuantConfig(norm="all_linear", norm_eps=1e-6, include=["*attn*"]))
    mods = bitlinear_modules(model)
    assert len(mods) == 8 and all(m.input_norm is not None and m.input_norm.eps == 1e-6 for m in mods.values())
    assert all(m.input_norm.weight.shape == (m.in_features,) for m in mods.values())


def test_none_places_no_norm():
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())
    quantize_model(model, QuantConfig(norm="none"))
    assert all(m.input_norm is None for m in bitlinear_modules(model).values())
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_settings_reach_every_layer():
    model = _model()
    quantize_model(model, QuantConfig(weight_scale="absmedian", weight_lambda=0.25, activation_lambda=0.75))
    for m in bitlinear_modules(model).values():
        assert (m.weight_scale, m.weight_lambda, m.activation_lambda) == ("absmedian", 0.25, 0.75)


def test_filter_matching_nothing_raises():
    with pytest.raises(ConfigError, match="quant.include"):
        quantize_model(_model(), QuantConfig(include=["*no_such_layer*"]))
    with pytest.raises(ConfigError):
        quantize_model(_model(), QuantConfig(exclude=["*"]))


def test_disabled_converts_nothing():
    model = _model()
    before = [(n, type(m)) for n, m in model.named_modules()]
    assert quantize_model(model, QuantConfig(enabled=False)) == []
    assert [(n, type(m)) for n, m in model.named_modules()] == before


def test_set_lambda_reaches_every_bitlinear():
    model = _model()
    quantize_model(model, QuantConfig())
    ids = torch.randint(0, 50, (1, 7))
    quantized = model(ids)
    set_lambda(model, weight=0.0, activation=0.0)
    assert all(m.weight_lambda == 0.0 and m.activation_lambda == 0.0 for m in bitlinear_modules(model).values())
    assert not torch.equal(model(ids), quantized)
    # at lambda 0 a conversion without extra norms is exactly the full-precision model
    plain = _model()
    quantize_model(plain, QuantConfig(norm="none"))
    set_lambda(plain, weight=0.0, activation=0.0)
    assert torch.equal(plain(ids), _model()(ids))
    set_lambda(model, activation=1.0)
    assert all(m.weight_lambda == 0.0 and m.activation_lambda == 1.0 for m in bitlinear_modules(model).values())
    set_lambda(model, weight=1.0)
    assert torch.equal(model(ids), quantized)


def test_second_conversion_leaves_existing_bitlinear_alone():
    model = _model()
    quantize_model(model, QuantConfig(include=["*.mlp.*"], norm="all_linear"))
    down = model.model.layers[0].mlp.down_proj
    converted = quantize_model(model, QuantConfig(include=["*"], norm="none"))
    assert sorted(converted) == sorted(n for n in _all_proj() if ".self_attn." in n)
    assert model.model.layers[0].mlp.down_proj is down and down.input_norm is not None


@pytest.mark.parametrize("placement", ["subln", "all_linear"])
def test_norm_gain_init_sets_only_the_extra_norms(placement):
    model = _model()
    quantize_model(model, QuantConfig(norm=placement, norm_gain_init=0.125))
    gains = {n: m.input_norm.weight for n, m in bitlinear_modules(model).items() if m.input_norm is not None}
    assert gains and all(torch.equal(g, torch.full_like(g, 0.125)) for g in gains.values())
    assert len(gains) == (4 if placement == "subln" else 14)
    # the decoder's own norms keep RMSNorm's 1
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters()
               if "layernorm" in n or n == "model.norm.weight")
    with pytest.raises(ConfigError, match="norm_gain_init"):
        QuantConfig(norm_gain_init=0.0)
