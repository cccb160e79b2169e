"""Set every BitLinear's lambdas (and input-norm switch) from the phase-in plan at each step.

The plan (schedules/phase_in.py) is a pure function of `trainer.global_step`, applied before each
training batch, before validation and when fitting starts, so a resumed run (or a validation at
step N) sees exactly the lambdas of step N. `build_schedule_callbacks` turns a ScheduleConfig into
this callback plus the TransitionCallback that applies the optimizer-state policy.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.nn as nn

from bitnet_train.config import ConfigError, ScheduleConfig
from bitnet_train.lit.callbacks.transitions import TransitionCallback
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.schedules.phase_in import PhaseInPlan
from bitnet_train.schedules.transitions import check_within_run


def _network(pl_module: L.LightningModule) -> nn.Module:
    return getattr(pl_module, "model", pl_module)


class PhaseInCallback(L.Callback):
    def __init__(self, plan: PhaseInPlan) -> None:
        self.plan = plan

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.plan.apply(_network(pl_module), trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._apply(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)


def build_schedule_callbacks(cfg: ScheduleConfig, model: nn.Module, total_steps: int) -> list[L.Callback]:
    """The callbacks a schedule needs (none when it is inactive: quantized from step 0 as before)."""
    if not cfg.active:
        return []
    names = list(bitlinear_modules(model))
    if not names:
        raise ConfigError("a quantization schedule is set but the model has no quantized linears; "
                          "set quant.enabled=true (or schedule=none)")
    plan = PhaseInPlan.build(cfg, names, total_steps)
    check_within_run([plan.transition], total_steps)
    if plan.end_step >= total_steps:
        raise ConfigError(
            f"the schedule reaches full quantization only at step {plan.end_step} (transition {plan.transition_step}, "
            f"{max(plan.groups.values()) + 1} layer groups {cfg.layers.offset} steps apart, ramps of "
            f"{cfg.weight.length}/{cfg.activation.length} steps), after the run ends (trainer.max_steps={total_steps}); "
            "shorten schedule.layers.offset or the ramps, move schedule.at earlier, or train longer")
    return [PhaseInCallback(plan), TransitionCallback([plan.transition])]
