"""Layer-wise plans: per-layer lambda values at given steps for every plan."""

from __future__ import annotations

import pytest

from bitnet_train.config import ConfigError, LayerPlanConfig, ModelConfig, QuantConfig, ScheduleConfig, from_mapping
from bitnet_train.models import CausalLM
from bitnet_train.quant import bitlinear_modules, quantize_model
from bitnet_train.schedules.layerwise import layer_groups, layer_index
from bitnet_train.schedules.phase_in import PhaseInPlan

PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _names(layers: int = 3) -> list[str]:
    model = CausalLM(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                                 num_attention_heads=2))
    quantize_model(model, QuantConfig())
    return list(bitlinear_modules(model))


def _plan(names, total=100, **schedule) -> PhaseInPlan:
    return PhaseInPlan.build(from_mapping(ScheduleConfig, "schedule", schedule), names, total)


def test_real_model_names():
    names = _names()
    assert names == [f"model.layers.{i}.{p}" for i in range(3) for p in PROJ]
    assert [layer_index(n) for n in names[::7]] == [0, 1, 2]
    assert layer_index("lm_head") is None


def test_all_layers_together():
    names = _names()
    plan = _plan(names, at=10, weight={"shape": "linear", "length": 4}, activation={"shape": "step"})
    assert set(plan.lambdas(9).values()) == {(0.0, 0.0)}
    assert set(plan.lambdas(10).values()) == {(0.25, 1.0)}
    assert set(plan.lambdas(13).values()) == {(1.0, 1.0)}
    assert plan.end_step == 13


def test_bottom_up_values():
    names = _names()
    plan = _plan(names, at=10, weight={"shape": "linear", "length": 4}, activation={"shape": "linear", "length": 2},
                 layers={"plan": "bottom_up", "offset": 5})
    lam = plan.lambdas(16)
    # layer 0 started at 10 (7th ramp step: done), layer 1 at 15 (2nd step), layer 2 at 20 (not yet)
    assert lam["model.layers.0.mlp.up_proj"] == (1.0, 1.0)
    assert lam["model.layers.1.self_attn.q_proj"] == (0.5, 1.0)
    assert lam["model.layers.2.mlp.down_proj"] == (0.0, 0.0)
    assert plan.lambdas(15)["model.layers.1.mlp.up_proj"] == (0.25, 0.5)
    assert plan.layer_start("model.layers.2.self_attn.v_proj") == 20
    assert plan.end_step == 23


def test_top_down_values():
    names = _names()
    plan = _plan(names, at=0.1, weight={"shape": "step"}, layers={"plan": "top_down", "offset": 3})
    assert plan.transition_step == 10
    starts = {i: plan.layer_start(f"model.layers.{i}.mlp.gate_proj") for i in range(3)}
    assert starts == {2: 10, 1: 13, 0: 16}
    lam = plan.lambdas(13)
    assert lam["model.layers.2.self_attn.o_proj"] == (1.0, 1.0)
    assert lam["model.layers.1.self_attn.o_proj"] == (1.0, 1.0)
    assert lam["model.layers.0.self_attn.o_proj"] == (0.0, 0.0)


def test_lm_head_sits_on_top():
    names = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj", "lm_head"]
    assert layer_groups(names, LayerPlanConfig(plan="bottom_up")) == {names[0]: 0, names[1]: 1, "lm_head": 2}
    assert layer_groups(names, LayerPlanConfig(plan="top_down")) == {"lm_head": 0, names[1]: 1, names[0]: 2}


def test_explicit_order():
    names = _names(2)
    plan = _plan(names, at=0, weight={"shape": "linear", "length": 2},
                 layers={"plan": "explicit", "order": ["model.layers.1.*", ["model.layers.0.mlp.*", "*"]], "offset": 10})
    assert plan.layer_start("model.layers.1.self_attn.q_proj") == 0
    assert plan.layer_start("model.layers.0.mlp.up_proj") == 10
    assert plan.layer_start("model.layers.0.self_attn.q_proj") == 10  # the catch-all of the second group
    lam = plan.lambdas(0)
    assert lam["model.layers.1.mlp.down_proj"] == (0.5, 1.0) and lam["model.layers.0.mlp.down_proj"] == (0.0, 0.0)


def test_explicit_unmatched_layer_is_an_error():
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.self_attn\.q_proj.*'\*'"):
        layer_groups(_names(1), LayerPlanConfig(plan="explicit", order=[["*mlp*"]]).section("schedule.layers"))


def test_by_type_default_and_custom():
    names = _names(2)
    default = _plan(names, at=4, layers={"plan": "by_type", "offset": 2})
    starts = {p: default.layer_start(f"model.layers.1.{p}") for p in PROJ}
    assert starts == {"self_attn.q_proj": 4, "self_attn.k_proj": 4, "self_attn.v_proj": 4, "self_attn.o_proj": 6,
                      "mlp.gate_proj": 8, "mlp.up_proj": 8, "mlp.down_proj": 10}
    assert default.lambdas(7)["model.layers.0.self_attn.o_proj"] == (1.0, 1.0)
    assert default.lambdas(7)["model.layers.0.mlp.up_proj"] == (0.0, 0.0)
    custom = _plan(names, at=0, layers={"plan": "by_type", "order": [["*_proj"]], "offset": 7})
    assert {custom.layer_start(n) for n in names} == {0}
    # by_type matches leaf names only: a pattern on the full name matches nothing
    with pytest.raises(ConfigError):
        _plan(names, at=0, layers={"plan": "by_type", "order": ["model.layers.*"]})
