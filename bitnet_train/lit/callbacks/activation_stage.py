"""Switch every BitLinear between 8-bit activations and its configured scheme at the two-stage step.

The plan (schedules/activation_stage.py) is applied when fitting starts, before each training batch
and before validation, from `trainer.global_step`, so a resumed run or a validation at step N sees
the stage of step N. `build_activation_stage_callbacks` turns quant.activation_schemes_at into this
callback plus a TransitionCallback (lit/callbacks/transitions.py) that applies the optimizer-state
policy at the switch and marks it in the loggers and the spike monitor.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.nn as nn

from bitnet_train.config import ConfigError, QuantConfig
from bitnet_train.lit.callbacks.transitions import TransitionCallback
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.schedules.activation_stage import ActivationStagePlan
from bitnet_train.schedules.transitions import check_within_run


class ActivationStageCallback(L.Callback):
    def __init__(self, plan: ActivationStagePlan) -> None:
        self.plan = plan

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.plan.apply(getattr(pl_module, "model", pl_module), trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._apply(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)


def build_activation_stage_callbacks(cfg: QuantConfig, model: nn.Module, total_steps: int) -> list[L.Callback]:
    """The callbacks of two-stage training (none when quant.activation_schemes_at is 0)."""
    if cfg.activation_schemes_at == 0 or not cfg.enabled:
        return []
    if not bitlinear_modules(model):
        raise ConfigError("quant.activation_schemes_at is set but the model has no quantized linears")
    plan = ActivationStagePlan.build(cfg, total_steps)
    if plan.step == 0:
        return []
    check_within_run([plan.transition], total_steps)
    return [ActivationStageCallback(plan), TransitionCallback([plan.transition])]
