"""Phase-in ramp shapes, value by value against their formulas."""

from __future__ import annotations

import math

import pytest

from bitnet_train.config import RampConfig
from bitnet_train.schedules.ramps import ramp, ramp_from, ramp_steps

SHAPES = ["step", "linear", "exponential", "sigmoid", "cosine", "staircase"]


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_before_start_positive_at_start_one_at_end(shape):
    length = 10
    assert ramp(shape, -1, length) == 0.0 and ramp(shape, -100, length) == 0.0
    assert 0.0 < ramp(shape, 0, length) <= 1.0  # the ramp's first step is quantized
    assert ramp(shape, length - 1, length) == 1.0
    assert ramp(shape, length + 5, length) == 1.0
    values = [ramp(shape, n, length) for n in range(length)]
    assert values == sorted(values), values  # never decreases


def test_step_is_abrupt_whatever_the_length():
    assert [ramp("step", n, 0) for n in (-1, 0, 1)] == [0.0, 1.0, 1.0]
    assert ramp("step", 0, 500) == 1.0


def test_linear_is_hf_blog_formula():
    # HF "fine-tuning LLMs to 1.58 bit": lambda = min(step / 1000, 1), counted from 1 at the first ramp step
    assert [ramp("linear", n, 1000) for n in (0, 1, 499, 998, 999)] == pytest.approx([0.001, 0.002, 0.5, 0.999, 1.0])


def test_exponential_formula():
    k = 3.0
    for n in (0, 3, 7):
        t = (n + 1) / 10
        assert ramp("exponential", n, 10, k=k) == pytest.approx(1 - (1 - t) ** k)


def test_sigmoid_is_rescaled_logistic():
    k = 8.0
    s = lambda x: 1 / (1 + math.exp(-k * (x - 0.5)))  # noqa: E731
    for n in (0, 4, 9):
        t = (n + 1) / 20
        assert ramp("sigmoid", n, 20, k=k) == pytest.approx((s(t) - s(0)) / (s(1) - s(0)))
    assert ramp("sigmoid", 9, 20, k=k) == pytest.approx(0.5, abs=0.05)  # symmetric around the middle


def test_cosine_formula():
    assert ramp("cosine", 4, 10) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.5)))


def test_staircase_values():
    # 8 steps, 4 stairs: two steps on each of 1/4, 2/4, 3/4, 1
    assert [ramp("staircase", n, 8, stairs=4) for n in range(9)] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0]


def test_ramp_from_config_and_steps():
    cfg = RampConfig(shape="exponential", length=6, k=2.0)
    assert ramp_from(cfg, 2) == ramp("exponential", 2, 6, k=2.0)
    assert ramp_steps(cfg) == 6 and ramp_steps(RampConfig()) == 1
