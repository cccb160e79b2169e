"""ScheduleConfig: defaults change nothing, every bad value is a one-line ConfigError naming the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bitnet_train.config import ConfigError, ScheduleConfig, from_mapping, to_dict
from bitnet_train.paths import conf_dir


def test_default_is_inactive_and_quantized_from_step_zero():
    cfg = ScheduleConfig()
    assert not cfg.active and cfg.transition_step(1000) == 0
    shipped = OmegaConf.load(conf_dir() / "schedule" / "none.yaml")
    assert from_mapping(ScheduleConfig, "schedule", shipped) == cfg
    # ramps or staggered layers make it active even at step 0
    assert from_mapping(ScheduleConfig, "schedule", {"weight": {"shape": "linear", "length": 5}}).active
    assert from_mapping(ScheduleConfig, "schedule", {"layers": {"plan": "bottom_up", "offset": 3}}).active
    assert not from_mapping(ScheduleConfig, "schedule", {"layers": {"plan": "bottom_up", "offset": 0}}).active


def test_at_is_a_step_or_a_fraction():
    assert ScheduleConfig(at=250).transition_step(1000) == 250
    assert ScheduleConfig(at=0.25).transition_step(1000) == 250
    assert ScheduleConfig(at=0.0).at == 0


def test_round_trip_through_dict():
    cfg = from_mapping(ScheduleConfig, "schedule", {
        "at": 0.5, "weight": {"shape": "sigmoid", "length": 40, "k": 8.0},
        "layers": {"plan": "by_type", "order": [["q_proj", "k_proj"], "o_proj"], "offset": 4}, "optimizer": "reset"})
    again = from_mapping(ScheduleConfig, "schedule", to_dict(cfg))
    assert again == cfg and again.layers.order == [["q_proj", "k_proj"], ["o_proj"]]


@pytest.mark.parametrize("values,match", [
    ({"at": 1.5}, r"schedule\.at=1\.5.*fraction.*integer"),
    ({"at": -3}, r"schedule\.at=-3"),
    ({"at": "half"}, r"schedule\.at='half'"),
    ({"weight": {"shape": "quadratic"}}, r"schedule\.weight\.shape='quadratic'.*linear"),
    ({"activation": {"shape": "linear"}}, r"schedule\.activation\.length=0 must be >= 1"),
    ({"weight": {"shape": "staircase", "length": 8, "stairs": 0}}, r"schedule\.weight\.stairs=0"),
    ({"weight": {"shape": "sigmoid", "length": 8, "k": -1}}, r"schedule\.weight\.k=-1"),
    ({"weight": {"lenght": 8}}, r"unknown key schedule\.weight\.lenght.*length"),
    ({"layers": {"plan": "sideways"}}, r"schedule\.layers\.plan='sideways'.*bottom_up"),
    ({"layers": {"plan": "explicit"}}, r"schedule\.layers\.order is empty"),
    ({"layers": {"plan": "bottom_up", "order": ["x"]}}, r"only used by plan=explicit or plan=by_type"),
    ({"layers": {"plan": "explicit", "order": [3]}}, r"order entry 3"),
    ({"layers": {"offset": -1}}, r"schedule\.layers\.offset=-1"),
    ({"optimizer": "keep"}, r"schedule\.optimizer='keep'.*retain, reset"),
    ({"norms": "never"}, r"schedule\.norms='never'.*always, at_transition"),
    ({"weight": 3}, r"schedule\.weight=3 must be a mapping"),
])
def test_bad_values(values, match):
    with pytest.raises(ConfigError, match=match):
        from_mapping(ScheduleConfig, "schedule", values)
