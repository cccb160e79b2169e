"""Transitions: switches between training stages at fixed optimizer steps, with an optimizer-state policy.

A run is a sequence of stages (16-bit, then 1.58-bit; later perhaps 8-bit then 4-bit activations).
Each boundary is a `Transition(name, step, optimizer)`: `step` is the first optimizer step (0-based)
of the new stage, and `optimizer` says what happens to the optimizer state right before it:

  retain  keep everything (Adam's moments carry over from the previous stage);
  reset   zero every tensor of the per-parameter state: Adam's first and second moments and its
          step counters, so the next update is the one a freshly built optimizer would make
          (bias correction included). The learning-rate schedule is not touched: it is a
          function of the global step.

What changes in the model at a transition is decided elsewhere, as a pure function of the step
(schedules/phase_in.py for quantization strength), so resuming anywhere needs no extra state.
Another switch (say 8-bit to 4-bit activations late in a run) is one more Transition: its own
step function sets the model, and its Transition goes to a TransitionCallback (the same list or
its own callback) that applies the optimizer policy; the spike monitor marks the transitions of
every callback that has a `transitions` list.
The continual-QAT paper (Nielsen et al., arXiv 2502.11895) compares retain and reset at the
16 -> 1.58-bit switch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitnet_train.config import ConfigError

POLICIES = ("retain", "reset")


@dataclass(frozen=True)
class Transition:
    """The boundary between two stages of a run."""

    name: str
    """Short label for logs and plots (e.g. quantize)."""
    step: int
    """First optimizer step (0-based) of the new stage."""
    optimizer: str = "retain"
    """retain or reset (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.optimizer not in POLICIES:
            raise ConfigError(f"transition {self.name}: optimizer={self.optimizer!r} is not allowed; "
                              f"choose one of {', '.join(POLICIES)}")
        if self.step < 0:
            raise ConfigError(f"transition {self.name}: step={self.step} must be >= 0")


def check_within_run(transitions: list[Transition], total_steps: int) -> None:
    """A transition at or after the last step would never act: fail before training."""
    for t in transitions:
        if t.step >= total_steps:
            raise ConfigError(
                f"transition {t.name!r} at step {t.step} is not before the end of the run (trainer.max_steps="
                f"{total_steps}); move it earlier (e.g. schedule.at=0.5 for the middle) or train longer")


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Zero every tensor (and number) in the optimizer's per-parameter state; returns how many were zeroed."""
    zeroed = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
                zeroed += 1
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                state[key] = type(value)(0)
                zeroed += 1
    return zeroed


def apply_policy(policy: str, optimizers: list[torch.optim.Optimizer]) -> int:
    """Apply `retain` (nothing) or `reset` to every optimizer; returns the number of state entries zeroed."""
    if policy == "retain":
        return 0
    return sum(reset_optimizer_state(opt) for opt in optimizers)
