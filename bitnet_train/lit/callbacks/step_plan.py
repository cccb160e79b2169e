"""Apply the run's step plans to every BitLinear: the quantization phase-in and the activation-scheme switch.

A step plan is a pure function of `trainer.global_step` that sets module state: the phase-in plan
(schedules/phase_in.py: each layer's weight/activation lambdas and input-norm switch, from `schedule=`)
and the two-stage activation plan (schedules/activation_stage.py: 8-bit activations before
quant.activation_schemes_at, the configured a4.8 / v2 schemes from it on). `StepPlanCallback` applies
them when fitting starts, before each training batch and before validation, so a resumed run (or a
validation at step N) sees exactly the state of step N. `build_step_plan_callbacks` builds it from the
settings, with the TransitionCallback (lit/callbacks/transitions.py) that applies the optimizer-state
policy at each plan's transition step and marks it in the loggers and the spike monitor.
"""

from __future__ import annotations

from typing import Any, Protocol

import lightning as L
import torch.nn as nn

from bitnet_train.config import ConfigError, QuantConfig, ScheduleConfig
from bitnet_train.lit.callbacks.transitions import TransitionCallback
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.schedules.activation_stage import ActivationStagePlan
from bitnet_train.schedules.phase_in import PhaseInPlan
from bitnet_train.schedules.transitions import check_within_run


class StepPlan(Protocol):
    def apply(self, model: nn.Module, step: int) -> None: ...


class StepPlanCallback(L.Callback):
    def __init__(self, plans: list[StepPlan]) -> None:
        self.plans = list(plans)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        for plan in self.plans:
            plan.apply(model, trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._apply(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)


def phase_in_plan(cfg: ScheduleConfig, model: nn.Module, total_steps: int) -> PhaseInPlan | None:
    """The phase-in plan of `schedule=` (None when it is inactive: quantized from step 0)."""
    if not cfg.active:
        return None
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
    return plan


def activation_stage_plan(cfg: QuantConfig, model: nn.Module, total_steps: int) -> ActivationStagePlan | None:
    """The two-stage activation plan of quant.activation_schemes_at (None when it is 0)."""
    if cfg.activation_schemes_at == 0 or not cfg.enabled:
        return None
    if not bitlinear_modules(model):
        raise ConfigError("quant.activation_schemes_at is set but the model has no quantized linears")
    plan = ActivationStagePlan.build(cfg, total_steps)
    if plan.step == 0:
        return None
    check_within_run([plan.transition], total_steps)
    return plan


def build_step_plan_callbacks(schedule: ScheduleConfig | None, quant: QuantConfig | None, model: nn.Module,
                              total_steps: int) -> list[L.Callback]:
    """The callbacks of a run's step plans (none when neither the schedule nor the activation switch is set)."""
    plans: list[Any] = []
    if schedule is not None and (plan := phase_in_plan(schedule, model, total_steps)) is not None:
        plans.append(plan)
    if quant is not None and (stage := activation_stage_plan(quant, model, total_steps)) is not None:
        plans.append(stage)
    if not plans:
        return []
    return [StepPlanCallback(plans), TransitionCallback([plan.transition for plan in plans])]
