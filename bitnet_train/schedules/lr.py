"""Learning-rate and weight-decay schedules as pure functions of the optimizer step.

All schedules start with a linear warmup: lr * (step + 1) / warmup_steps. After it, with
p = progress through the remaining steps in [0, 1]:
  cosine     lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)      m = min_lr_ratio
  linear     lr * (m + (1 - m) * (1 - p))
  constant   lr
  two_phase  BitNet b1.58 2B4T: phase one decays linearly from lr to lr * phase1_end_ratio until
             phase2_start of the run; then the rate drops to lr * phase2_lr_ratio and decays
             linearly to lr * min_lr_ratio at the end (1.5e-3 -> 8e-4, then 5e-4 -> 0 in the
             report). Weight decay is `weight_decay` in phase one and `phase2_weight_decay` in
             phase two (0.1, then 0).
"""

from __future__ import annotations

import math

from bitnet_train.config import OptimConfig


def _linear(start: float, end: float, p: float) -> float:
    return start + (end - start) * min(max(p, 0.0), 1.0)


def phase2_step(cfg: OptimConfig, total_steps: int) -> int:
    """First step of phase two in a two_phase schedule."""
    return max(int(round(cfg.phase2_start * total_steps)), cfg.warmup_steps)


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Factor applied to cfg.lr at optimizer step `step` (0-based) of a `total_steps` run."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    m = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "two_phase":
        switch = phase2_step(cfg, total_steps)
        if step < switch:
            return _linear(1.0, cfg.phase1_end_ratio, (step - cfg.warmup_steps) / max(switch - cfg.warmup_steps, 1))
        return _linear(cfg.phase2_lr_ratio, m, (step - switch) / max(total_steps - 1 - switch, 1))
    p = min((step - cfg.warmup_steps) / max(total_steps - 1 - cfg.warmup_steps, 1), 1.0)
    if cfg.schedule == "cosine":
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
    return m + (1.0 - m) * (1.0 - p)


def weight_decay_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Weight decay of the decayed parameter group at optimizer step `step`."""
    if cfg.schedule == "two_phase" and step >= phase2_step(cfg, total_steps):
        return cfg.phase2_weight_decay
    return cfg.weight_decay
