"""Phase-in ramps: quantization strength lambda as a pure function of the steps since a ramp began.

`ramp(shape, n, length)` is the strength at the n-th step of a ramp (n = 0 is its first step, n < 0
is before it). A ramp of length L takes L steps to arrive: with t = (n + 1) / L,

  step         1 from the first step on (the abrupt 16 -> 1.58-bit switch; length ignored)
  linear       t                                   (HF "fine-tuning LLMs to 1.58 bit": min(step/1000, 1))
  exponential  1 - (1 - t)^k                       (fast at first, then gently into 1)
  sigmoid      (s(t) - s(0)) / (s(1) - s(0)),  s(t) = 1 / (1 + exp(-k (t - 1/2)))
               the blog's 1 / (1 + exp(-k (t - 1/2))) rescaled so it starts at 0 and ends at 1:
               unscaled it would jump from 0 at the start and to 1 at the end
  cosine       (1 - cos(pi t)) / 2
  staircase    ceil(t * stairs) / stairs           (1/stairs, 2/stairs, ..., 1 in equal spans)

and 1 for every n >= L - 1. The first step of a ramp therefore always has lambda > 0 (the ramp's
start is the first quantized step), and its last step has lambda exactly 1.
"""

from __future__ import annotations

import math

from bitnet_train.config import RampConfig


def ramp(shape: str, n: int, length: int, k: float = 5.0, stairs: int = 4) -> float:
    """Strength in [0, 1] at step `n` of a ramp (n < 0: before it, 0)."""
    if n < 0:
        return 0.0
    if shape == "step" or n + 1 >= length:
        return 1.0
    t = (n + 1) / length
    if shape == "linear":
        return t
    if shape == "exponential":
        return 1.0 - (1.0 - t) ** k
    if shape == "sigmoid":
        s0, s1 = _logistic(-0.5 * k), _logistic(0.5 * k)
        return (_logistic(k * (t - 0.5)) - s0) / (s1 - s0)
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    if shape == "staircase":
        return math.ceil(t * stairs - 1e-9) / stairs
    raise ValueError(f"unknown ramp shape {shape!r}")


def ramp_from(cfg: RampConfig, n: int) -> float:
    """`ramp` with the shape, length, k and stairs of a RampConfig."""
    return ramp(cfg.shape, n, cfg.length, cfg.k, cfg.stairs)


def ramp_steps(cfg: RampConfig) -> int:
    """Steps until the ramp reaches 1 (1 for `step`)."""
    return 1 if cfg.shape == "step" else cfg.length


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
