"""BitDistillConfig: the reference code's defaults (docs/METHODS.md#bitdistill-stage-3-logit-distillation), one-line errors naming the key, and the shipped YAML matches the dataclass."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bitnet_train.config import ConfigError, DataConfig, from_mapping, to_dict
from bitnet_train.distill.config import AttentionRelationConfig, DistillStageConfig, BitDistillConfig
from bitnet_train.paths import conf_dir


def test_defaults_follow_the_reference_code():
    cfg = BitDistillConfig(teacher="t")
    assert cfg.norms == "subln" and cfg.student == "teacher" and not cfg.trust_remote_code
    kd = cfg.stage3
    assert (kd.logit_weight, kd.attention_weight, kd.temperature, kd.tau_squared) == (10.0, 1e5, 5.0, True)
    assert kd.optim == {"lr": 5e-5, "weight_decay": 0.01, "schedule": "cosine", "min_lr_ratio": 0.0}
    assert kd.warmup_fraction == 0.05 and kd.epochs == 3.0
    att = kd.attention
    assert (att.relation_heads, att.relation, att.temperature, att.states) == (32, "cosine", 1.0, ["q", "k", "v"])
    assert not att.causal_mask and not att.padding_mask and att.layers == [-6]
    assert cfg.stage2.tokens == 0 and not kd.logit_cache.enabled


def test_shipped_group_equals_the_dataclass_defaults():
    section = OmegaConf.load(conf_dir() / "distill" / "bitdistill.yaml")
    section.teacher = "t"
    loaded = from_mapping(BitDistillConfig, "distill", section)
    expected = to_dict(BitDistillConfig(teacher="t"))
    got = to_dict(loaded)
    # stage data/optim overrides are all-null placeholders in YAML (null keeps the `data`/`optim` value)
    for stage in ("stage2", "stage3"):
        got[stage]["data"] = {k: v for k, v in got[stage]["data"].items() if v is not None}
        expected[stage]["data"] = {k: v for k, v in expected[stage]["data"].items() if v is not None}
    got["stage2"]["optim"] = {k: v for k, v in got["stage2"]["optim"].items() if v is not None}
    assert got == expected


@pytest.mark.parametrize("values,pattern", [
    ({"teacher": "t", "norms": "pre"}, r"distill\.norms='pre'.*subln, all_linear, none"),
    ({"teacher": "t", "student": "random"}, r"distill\.student='random'.*teacher, config"),
    ({"teacher": "t", "teacher_dtype": "int8"}, r"distill\.teacher_dtype='int8'"),
    ({"teacher": "t", "stage2": {"tokens": -1}}, r"distill\.stage2\.tokens=-1 must be an integer >= 0"),
    ({"teacher": "t", "stage2": {"tokens": 1.5}}, r"distill\.stage2\.tokens=1\.5"),
    ({"teacher": "t", "stage2": {"data": "corpus.txt"}}, r"distill\.stage2\.data='corpus\.txt' must be a mapping"),
    ({"teacher": "t", "stage3": {"temperature": 0}}, r"distill\.stage3\.temperature=0 must be a number > 0"),
    ({"teacher": "t", "stage3": {"logit_weight": -1}}, r"distill\.stage3\.logit_weight=-1"),
    ({"teacher": "t", "stage3": {"tau_squared": "yes"}}, r"distill\.stage3\.tau_squared='yes'"),
    ({"teacher": "t", "stage3": {"warmup_fraction": 2}}, r"distill\.stage3\.warmup_fraction=2"),
    ({"teacher": "t", "stage3": {"attention": {"relation": "dot"}}},
     r"distill\.stage3\.attention\.relation='dot'.*cosine, scaled_dot"),
    ({"teacher": "t", "stage3": {"attention": {"states": ["q", "o"]}}}, r"attention\.states=\['q', 'o'\]"),
    ({"teacher": "t", "stage3": {"attention": {"layers": []}}}, r"attention\.layers=\[\] must be a non-empty list"),
    ({"teacher": "t", "stage3": {"attention": {"layers": [1, 2], "student_layers": [0]}}},
     r"student_layers has 1 entries for 2"),
    ({"teacher": "t", "stage3": {"attention": {"relation_heads": 0}}}, r"relation_heads=0 must be an integer >= 1"),
    ({"teacher": "t", "stage3": {"logit_cache": {"top_k": 0}}}, r"logit_cache\.top_k=0"),
    ({"teacher": "t", "stage3": {"attention": {"heads": 8}}}, r"unknown key distill\.stage3\.attention\.heads"),
    ({"teacher": "t", "stage4": {}}, r"unknown key distill\.stage4"),
])
def test_bad_values_name_the_key(values, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        from_mapping(BitDistillConfig, "distill", values)
    assert "\n" not in str(err.value)


def test_teacher_is_required():
    for teacher in (None, "", "  "):
        with pytest.raises(ConfigError, match=r"distill\.teacher is not set; give the full-precision teacher's folder"):
            BitDistillConfig(teacher=teacher)


def test_nested_sections_become_dataclasses():
    cfg = from_mapping(BitDistillConfig, "distill", OmegaConf.create(
        {"teacher": "t", "stage3": {"attention": {"layers": [-1, 3], "states": ["v"]}, "steps": 5}}))
    assert isinstance(cfg.stage3, DistillStageConfig) and isinstance(cfg.stage3.attention, AttentionRelationConfig)
    assert cfg.stage3.attention.layers == [-1, 3] and cfg.stage3.attention.states == ["v"] and cfg.stage3.steps == 5


def test_data_layout_setting():
    assert DataConfig().layout == "text"
    with pytest.raises(ConfigError, match=r"data\.layout='pairs'.*text, prompt_answer"):
        DataConfig(layout="pairs")
    with pytest.raises(ConfigError, match=r"data\.layout=prompt_answer does not stream"):
        DataConfig(layout="prompt_answer", streaming=True)


@pytest.mark.parametrize("experiment", ["distill_qwen", "distill_llama", "distill_tiny"])
def test_all_linear_norms_take_the_reference_eps(experiment):
    """The reference code's per-linear RMSNorm uses eps 1e-8; the sub-norms keep quant's 1e-5."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        for norms, eps in (("all_linear", 1e-8), ("subln", 1e-5)):
            cfg = compose("config", overrides=[f"+experiment={experiment}", "distill.teacher=t",
                                               f"distill.norms={norms}"])
            assert (cfg.quant.norm, cfg.quant.norm_eps) == (norms, eps)
