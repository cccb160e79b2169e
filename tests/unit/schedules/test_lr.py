"""Learning-rate and weight-decay schedules, value by value."""

from __future__ import annotations

import math

import pytest

from bitnet_train.config import OptimConfig
from bitnet_train.schedules.lr import lr_multiplier, phase2_step, weight_decay_at


def test_warmup_is_linear_from_first_step():
    cfg = OptimConfig(warmup_steps=10)
    assert [lr_multiplier(s, 100, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_cosine_reaches_min_ratio_at_last_step():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(10, 101, cfg) == pytest.approx(1.0)
    assert lr_multiplier(55, 101, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(100, 101, cfg) == pytest.approx(0.1)


def test_linear_and_constant():
    lin = OptimConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert [lr_multiplier(s, 11, lin) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    const = OptimConfig(warmup_steps=0, schedule="constant")
    assert lr_multiplier(7, 11, const) == 1.0


def test_two_phase_matches_2b4t_numbers():
    # 1.5e-3 -> 8e-4 over stage one, then 5e-4 -> 0; weight decay 0.1 then 0.
    cfg = OptimConfig(lr=1.5e-3, warmup_steps=0, schedule="two_phase", min_lr_ratio=0.0, weight_decay=0.1)
    total = 1001
    switch = phase2_step(cfg, total)
    assert switch == 500
    assert cfg.lr * lr_multiplier(0, total, cfg) == pytest.approx(1.5e-3)
    assert cfg.lr * lr_multiplier(switch - 1, total, cfg) == pytest.approx(8e-4, rel=0.01)
    assert cfg.lr * lr_multiplier(switch, total, cfg) == pytest.approx(5e-4)
    assert cfg.lr * lr_multiplier(total - 1, total, cfg) == pytest.approx(0.0, abs=1e-12)
    assert weight_decay_at(switch - 1, total, cfg) == 0.1
    assert weight_decay_at(switch, total, cfg) == 0.0


def test_weight_decay_constant_outside_two_phase():
    cfg = OptimConfig(schedule="cosine", weight_decay=0.05)
    assert weight_decay_at(10_000, 20_000, cfg) == 0.05
