"""The phase-in plan: every quantized linear's weight and activation lambda at any optimizer step.

Built once from ScheduleConfig, the names of the quantized linears and the run length:

  T        = the transition step (schedule.at, a step or a fraction of the run)
  start_l  = T + group_l * layers.offset           (group_l from the layer-wise plan, layerwise.py)
  lambda_w = ramp_w(step - start_l)                (ramps.py; 0 before start_l)
  lambda_a = ramp_a(step - start_l)

Everything is a pure function of the step, so a run resumed mid-ramp sets exactly the lambdas an
uninterrupted run has (no state in the checkpoint). Before T every lambda is 0: the 16-bit stage.

The extra input norms (quant.norm = subln / all_linear) follow schedule.norms:
  always         they are part of the network from step 0 (the 16-bit stage trains the same
                 architecture; at lambda 0 the forward equals that architecture unquantized);
  at_transition  each layer's norm is bypassed until its own ramp starts, so before T the forward
                 is exactly the plain decoder without extra norms (a loaded 16-bit model computes
                 what it computed before); the norms start at 1 when they come in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from bitnet_train.config import RampConfig, ScheduleConfig
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.schedules.layerwise import layer_groups
from bitnet_train.schedules.ramps import ramp_from, ramp_steps
from bitnet_train.schedules.transitions import Transition

TRANSITION_NAME = "quantize"


@dataclass(frozen=True)
class PhaseInPlan:
    """Per-layer ramps of a run; `lambdas(step)` is the whole state of quantization at a step."""

    transition_step: int
    groups: dict[str, int]
    offset: int
    weight: RampConfig
    activation: RampConfig
    norms: str = "always"
    optimizer: str = "retain"

    @classmethod
    def build(cls, cfg: ScheduleConfig, names: list[str], total_steps: int) -> "PhaseInPlan":
        return cls(transition_step=cfg.transition_step(total_steps), groups=layer_groups(names, cfg.layers),
                   offset=cfg.layers.offset, weight=cfg.weight, activation=cfg.activation,
                   norms=cfg.norms, optimizer=cfg.optimizer)

    @property
    def transition(self) -> Transition:
        """The 16 -> 1.58-bit switch as a generic Transition (optimizer policy included)."""
        return Transition(TRANSITION_NAME, self.transition_step, self.optimizer)

    def layer_start(self, name: str) -> int:
        """First step at which layer `name` is quantized at all."""
        return self.transition_step + self.groups[name] * self.offset

    def lambdas(self, step: int) -> dict[str, tuple[float, float]]:
        """(weight lambda, activation lambda) of every quantized linear at optimizer step `step`."""
        out = {}
        for name in self.groups:
            n = step - self.layer_start(name)
            out[name] = (ramp_from(self.weight, n), ramp_from(self.activation, n))
        return out

    def norm_active(self, name: str, step: int) -> bool:
        return self.norms == "always" or step >= self.layer_start(name)

    @property
    def end_step(self) -> int:
        """First step at which every lambda is 1."""
        last = max((self.layer_start(n) for n in self.groups), default=self.transition_step)
        return last + max(ramp_steps(self.weight), ramp_steps(self.activation)) - 1

    def apply(self, model: nn.Module, step: int) -> None:
        """Set every BitLinear of `model` to its lambdas (and input-norm switch) at `step`."""
        values = self.lambdas(step)
        for name, layer in bitlinear_modules(model).items():
            if name not in values:
                raise KeyError(f"{name} is a BitLinear that the phase-in plan does not know")
            w, a = values[name]
            layer.set_lambda(weight=w, activation=a)
            layer.input_norm_active = self.norm_active(name, step)
