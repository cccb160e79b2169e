"""One source for every default: each group's base YAML (what a run composes) equals its dataclass defaults.

The dataclasses (bitnet_train/config.py, distill/config.py) hold the defaults that code, tests and tools
construct directly; the YAML files are what `python -m bitnet_train` composes. A value changed in one and
not the other fails here, as does a key present in one only. The distill group has the same check in
tests/unit/distill/test_distill_config.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bitnet_train.config import DataConfig, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig, from_mapping, to_dict

GROUPS = [("model", "tiny", ModelConfig), ("quant", "b158", QuantConfig), ("optim", "adamw", OptimConfig),
          ("data", "default", DataConfig), ("schedule", "none", ScheduleConfig)]


def _composed(*overrides: str):
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_root_config_composes_the_base_files():
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert [choices[group] for group, _, _ in GROUPS] == [name for _, name, _ in GROUPS]


@pytest.mark.parametrize("group, name, cls", GROUPS, ids=[g for g, _, _ in GROUPS])
def test_base_yaml_equals_dataclass_defaults(group, name, cls):
    section = OmegaConf.to_container(_composed()[group], resolve=True)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(section) == fields, f"conf/{group}/{name}.yaml keys differ: {sorted(set(section) ^ fields)}"
    assert to_dict(from_mapping(cls, group, section)) == to_dict(cls())


def test_a_changed_default_is_caught():
    """The check can fail: the optimizer group's warmup differs from a dataclass with another default."""
    section = OmegaConf.to_container(_composed("optim.warmup_steps=375").optim, resolve=True)
    assert to_dict(from_mapping(OptimConfig, "optim", section)) != to_dict(OptimConfig())
