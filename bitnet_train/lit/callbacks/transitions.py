"""Apply each Transition's optimizer-state policy at its step, and mark the step in every logger.

At the start of the first micro-batch of optimizer step `t.step` (before its forward pass and its
update), `reset` zeroes the optimizers' state (schedules/transitions.py) and `retain` leaves it.
A run resumed from a checkpoint written at that step is before the transition, so the policy
is applied there too, exactly as in an uninterrupted run. Every logger gets
`schedule/transition/<name> = 1` at that step; `transitions` is public for other callbacks
(the spike monitor marks them).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from bitnet_train.schedules.transitions import Transition, apply_policy

log = logging.getLogger(__name__)


class TransitionCallback(L.Callback):
    def __init__(self, transitions: list[Transition]) -> None:
        self.transitions = sorted(transitions, key=lambda t: t.step)
        self._applied: set[str] = set()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        for t in self.transitions:
            if t.step != step or t.name in self._applied:
                continue
            self._applied.add(t.name)
            zeroed = apply_policy(t.optimizer, trainer.optimizers)
            log.info("step %d: transition %r (optimizer state %s%s)", step, t.name, t.optimizer,
                     f", {zeroed} tensors zeroed" if t.optimizer == "reset" else "")
            for logger in trainer.loggers:
                logger.log_metrics({f"schedule/transition/{t.name}": 1.0}, step=step)
