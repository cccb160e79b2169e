"""ModelConfig / QuantConfig validation and from_mapping fail early with a ConfigError naming the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bitnet_train.config import ConfigError, ModelConfig, QuantConfig, from_mapping, to_dict


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ---- ModelConfig --------------------------------------------------------------------------------

def test_model_defaults_fill_derived_fields():
    cfg = ModelConfig(hidden_size=64, num_attention_heads=8)
    assert cfg.num_key_value_heads == 8 and cfg.head_dim == 8
    cfg = ModelConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24)
    assert cfg.head_dim == 24 and cfg.num_key_value_heads == 2


def test_model_bad_hidden_act():
    with pytest.raises(ConfigError, match=r"model\.hidden_act='gelu'.*relu2, silu"):
        ModelConfig(hidden_act="gelu")


def test_model_heads_not_divisible_by_kv_heads():
    with pytest.raises(ConfigError, match=r"model\.num_attention_heads=6.*model\.num_key_value_heads=4"):
        ModelConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=4)


def test_model_hidden_not_divisible_by_heads_needs_head_dim():
    with pytest.raises(ConfigError, match=r"model\.hidden_size=50.*model\.head_dim"):
        ModelConfig(hidden_size=50, num_attention_heads=4)
    assert ModelConfig(hidden_size=50, num_attention_heads=4, head_dim=16).head_dim == 16


def test_model_odd_head_dim():
    with pytest.raises(ConfigError, match=r"model\.head_dim=7"):
        ModelConfig(hidden_size=28, num_attention_heads=4)


@pytest.mark.parametrize("key,value", [
    ("hidden_size", 0), ("num_hidden_layers", -1), ("rms_norm_eps", 0.0), ("vocab_size", 0),
    ("num_key_value_heads", 0), ("hidden_size", True), ("rope_theta", "big"),
])
def test_model_non_positive_values(key, value):
    with pytest.raises(ConfigError, match=rf"model\.{key}="):
        ModelConfig(**{key: value})


# ---- QuantConfig --------------------------------------------------------------------------------

def test_quant_defaults_follow_spec():
    cfg = QuantConfig()
    assert cfg.enabled and cfg.weight_scale == "absmean" and cfg.activation_bits == 8
    assert cfg.norm == "subln" and cfg.include == ["*"]
    assert "lm_head" in cfg.exclude and any("embed_tokens" in p for p in cfg.exclude)
    assert cfg.weight_lambda == 1.0 and cfg.activation_lambda == 1.0


def test_quant_bad_weight_scale_names_key_and_choices():
    with pytest.raises(ConfigError) as err:
        QuantConfig(weight_scale="foo")
    msg = str(err.value)
    assert "quant.weight_scale" in msg and "'foo'" in msg
    assert "absmean" in msg and "absmedian" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("key,value,pattern", [
    ("norm", "pre", r"quant\.norm='pre'.*subln, all_linear, none"),
    ("activation_bits", 4, r"quant\.activation_bits=4"),
    ("norm_eps", 0, r"quant\.norm_eps=0"),
    ("weight_lambda", 1.5, r"quant\.weight_lambda=1\.5.*\[0, 1\]"),
    ("activation_lambda", -0.1, r"quant\.activation_lambda=-0\.1"),
    ("include", "*", r"quant\.include='\*'"),
    ("exclude", ["lm_head", 3], r"quant\.exclude="),
])
def test_quant_bad_values(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        QuantConfig(**{key: value})


def test_quant_accepts_boundaries_and_tuples():
    cfg = QuantConfig(weight_scale="absmedian", norm="all_linear", weight_lambda=0, activation_lambda=1,
                      include=("*.mlp.*",), exclude=())
    assert cfg.include == ["*.mlp.*"] and cfg.exclude == []
    assert QuantConfig(norm="none").norm == "none"


# ---- from_mapping -------------------------------------------------------------------------------

def test_from_mapping_rejects_unknown_key_by_name():
    with pytest.raises(ConfigError) as err:
        from_mapping(QuantConfig, "quant", {"weight_scale": "absmean", "wieght_lambda": 0.5})
    msg = str(err.value)
    assert "quant.wieght_lambda" in msg and "weight_lambda" in msg.split("allowed")[1]
    with pytest.raises(ConfigError, match=r"unknown key model\.hidden"):
        from_mapping(ModelConfig, "model", {"hidden": 64})


def test_from_mapping_validates_values():
    with pytest.raises(ConfigError, match=r"quant\.weight_scale='foo'"):
        from_mapping(QuantConfig, "quant", {"weight_scale": "foo"})


def test_from_mapping_accepts_omegaconf_and_none():
    section = OmegaConf.create({"norm": "all_linear", "include": ["*attn*"], "exclude": ["lm_head"]})
    cfg = from_mapping(QuantConfig, "quant", section)
    assert cfg.norm == "all_linear" and cfg.include == ["*attn*"] and type(cfg.include) is list
    assert from_mapping(QuantConfig, "quant", None) == QuantConfig()
    model = from_mapping(ModelConfig, "model", OmegaConf.create({"hidden_size": 64, "num_attention_heads": 2}))
    assert model.head_dim == 32
    assert to_dict(model)["head_dim"] == 32


def test_from_mapping_reads_the_shipped_quant_config():
    """The Hydra path: a DictConfig section whose lists are ListConfigs (neither list nor tuple)."""
    from pathlib import Path

    section = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "quant" / "b158.yaml")
    assert from_mapping(QuantConfig, "quant", section) == QuantConfig()
    # and a plain dict holding a ListConfig value, as dict(cfg.quant) gives
    cfg = from_mapping(QuantConfig, "quant", dict(OmegaConf.create({"exclude": ["lm_head"]})))
    assert cfg.exclude == ["lm_head"] and type(cfg.exclude) is list
