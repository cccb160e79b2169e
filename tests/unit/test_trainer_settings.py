"""check_trainer_settings: the shipped trainer configs pass; wrong types and ranges are one-line ConfigErrors."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from bitnet_train.config import ConfigError
from bitnet_train.tasks.trainer_settings import check_trainer_settings


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_shipped_trainer_configs_pass(name):
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"trainer={name}", "out_dir=/nowhere"])
    check_trainer_settings(cfg.trainer)


@pytest.mark.parametrize("key, value, pattern", [
    ("max_steps", "abc", r"trainer.max_steps='abc' must be an integer"),
    ("max_steps", 2.5, r"trainer.max_steps=2.5 must be an integer"),
    ("max_steps", 0, r"trainer.max_steps=0 must be >= 1"),
    ("accumulate_grad_batches", 0, r"accumulate_grad_batches=0 must be >= 1"),
    ("accumulate_grad_batches", "two", r"must be an integer"),
    ("log_every_n_steps", -3, r">= 1"),
    ("gradient_clip_val", "big", r"must be a number"),
    ("gradient_clip_val", -1.0, r">= 0"),
    ("val_check_interval", 1.5, r"fraction outside \[0, 1\]"),
    ("val_check_interval", "x", r"must be an integer \(batches\) or a fraction"),
    ("limit_val_batches", -1, r">= 0"),
    ("devices", 0, r"trainer.devices=0"),
    ("precision", "8-bit", r"not one of"),
    ("enable_model_summary", "yes", r"must be true or false"),
    ("max_stepz", 5, r"did you mean trainer.max_steps"),
])
def test_bad_values_are_one_line_errors(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        check_trainer_settings({"max_steps": 10, key: value})
    assert "\n" not in str(err.value)


def test_legal_alternatives_pass():
    check_trainer_settings({"max_steps": 5, "devices": [0, 1], "val_check_interval": 0.25,
                            "gradient_clip_val": None, "precision": "bf16-mixed", "fast_dev_run": 2})
