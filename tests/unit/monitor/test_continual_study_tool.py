"""tools/continual_study.py: its run plan and its threshold-free measure of the loss excess after a switch."""

from __future__ import annotations

import pytest


def test_switch_excess(load_tool):
    study = load_tool("continual_study")
    flat = [3.0] * 100
    bump = flat[:50] + [3.0 + 1.0 * 0.8 ** k for k in range(50)]  # +1 at step 50, decaying
    excess, back = study.switch_excess(bump, 50, before=20, after=30)
    assert excess == pytest.approx(0.8 ** 2)  # the 5-step median right after the jump: 3 + 0.8^2
    # back at the pre-switch level (3.0) only when the decay is within float rounding: never here
    assert back is None
    excess, back = study.switch_excess(flat, 50, before=20, after=30)
    assert excess == 0.0 and back == 4  # the first full 5-step window from the switch already is at the level


def test_plan_same_budget_different_timelines(load_tool):
    study = load_tool("continual_study")
    plan = study.runs(0.5, 100)
    assert list(plan) == ["fp16", "b158_from_start", "abrupt_retain", "abrupt_reset", "linear_retain"]
    assert plan["fp16"] == ["quant.weight_lambda=0", "quant.activation_lambda=0"]  # same network, never quantized
    assert "schedule.optimizer=reset" in plan["abrupt_reset"] and "schedule.at=0.5" in plan["abrupt_reset"]
    assert "schedule.weight.length=100" in plan["linear_retain"]
    assert not any("max_steps" in o for overrides in plan.values() for o in overrides)  # one budget for all
