"""tools/continual_study.py: its run plan, the loss gap to the 16-bit run, and its table."""

from __future__ import annotations

import pytest


def test_mean_gap(load_tool):
    study = load_tool("continual_study")
    reference = [3.0 + 0.1 * (i % 3) for i in range(10)]
    run = reference[:5] + [r + 0.5 for r in reference[5:]]
    assert study.mean_gap(run, reference, 0, 5) == 0.0
    assert study.mean_gap(run, reference, 5, 10) == pytest.approx(0.5)
    assert study.mean_gap(run, reference, 3, 7) == pytest.approx(0.25)


def test_plan_same_budget_different_timelines(load_tool):
    study = load_tool("continual_study")
    plan = study.runs(0.5, 100)
    assert list(plan) == ["fp16", "b158_from_start", "abrupt_retain", "abrupt_reset", "linear_retain"]
    assert plan["fp16"] == ["quant.weight_lambda=0", "quant.activation_lambda=0"]  # same network, never quantized
    assert "schedule.optimizer=reset" in plan["abrupt_reset"] and "schedule.at=0.5" in plan["abrupt_reset"]
    assert "schedule.weight.length=100" in plan["linear_retain"]
    assert not any("max_steps" in o for overrides in plan.values() for o in overrides)  # one budget for all


def test_markdown_table(load_tool):
    study = load_tool("continual_study")
    rows = [{"run": "fp16", "transition": None, "val_ppl": 100.0, "spikes": 0, "largest_spike_height": 0.0,
             "largest_spike_step": None, "recovery_steps": None, "gap_at_switch": 0.0, "gap_after_switch": 0.0,
             "gap_last_100": 0.0},
            {"run": "abrupt", "transition": 300, "val_ppl": 150.5, "spikes": 1, "largest_spike_height": 0.4,
             "largest_spike_step": 300, "recovery_steps": None, "gap_at_switch": 0.41, "gap_after_switch": 0.2,
             "gap_last_100": 0.31}]
    lines = study.markdown(rows).splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|") == lines[3].count("|") == 11
    assert lines[2].startswith("| fp16 | - | 100.00 | 0 | 0.000 | - | - | +0.000 |")
    assert "| not recovered | +0.410 | +0.200 | +0.310 |" in lines[3]
