"""Two-stage activation training (BitNet a4.8 and v2): 8-bit activations first, then the low-bit schemes.

BitNet a4.8 trains with 8-bit activations (b1.58 with the relu^2 GLU) for most of the tokens and
switches to its hybrid INT4 / top-K + INT8 scheme for the last few (95B + 5B tokens in the paper);
BitNet v2 continues its 8-bit H-BitLinear model with 4-bit activations the same way. Here the
switch is a Transition (schedules/transitions.py) named `activations` at the step that
quant.activation_schemes_at gives: before it every BitLinear quantizes its input with int8_absmax
(its Hadamard rotation stays: that is the v2 (a8) model), from it on with its configured scheme, and
the optimizer state follows quant.activation_schemes_optimizer (retain or reset) as at the
16-to-1.58-bit switch. Which stage a step is in is a pure function of the step, so a resumed run
continues in the right stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from bitnet_train.config import QuantConfig
from bitnet_train.quant.convert import set_activation_stage
from bitnet_train.schedules.transitions import Transition

TRANSITION_NAME = "activations"


@dataclass(frozen=True)
class ActivationStagePlan:
    step: int
    """First optimizer step (0-based) with the configured activation schemes."""
    optimizer: str = "retain"

    @classmethod
    def build(cls, cfg: QuantConfig, total_steps: int) -> "ActivationStagePlan":
        return cls(cfg.activation_stage_step(total_steps), cfg.activation_schemes_optimizer)

    @property
    def transition(self) -> Transition:
        return Transition(TRANSITION_NAME, self.step, self.optimizer)

    def schemes_active(self, step: int) -> bool:
        return step >= self.step

    def apply(self, model: nn.Module, step: int) -> None:
        set_activation_stage(model, self.schemes_active(step))
