"""Non-finite guard: no optimizer update is ever applied from a step whose loss or gradients are not finite.

At `on_before_optimizer_step` (after backward, before gradient clipping and the optimizer) the
step's loss (summed over micro-batches, captured in `on_before_backward`) and the gradients are
checked with torch.isfinite. On a non-finite step, policy
  stop   raise NonFiniteTrainingError naming the step and the last good checkpoint (nothing is updated
         or saved; the CLI exits non-zero)
  skip   drop the gradients (AdamW skips parameters without a gradient, so weights and moments stay
         as they were), log a `nonfinite_skip` event and go on; after `max_consecutive_skips`
         skipped steps in a row, stop as above. With several processes the decision is all-reduced: a
non-finite value on any rank counts for all.
At setup it also removes temporary checkpoint files left by killed writers in the checkpoint
folders of the run (lit/checkpoint_io.py). Skips are counted in the callback state, so a resumed
run stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bitnet_train.config import ConfigError
from bitnet_train.lit.checkpoint_io import (
    NonFiniteTrainingError,
    remove_stale_temporaries,
)

log = logging.getLogger(__name__)
POLICIES = ("stop", "skip")


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint a ModelCheckpoint of this trainer wrote (last.ckpt first), if any exists."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            for path in (cb.last_model_path, cb.best_model_path):
                if path and Path(path).exists():
                    return str(path)
            if cb.dirpath and (Path(cb.dirpath) / "last.ckpt").exists():
                return str(Path(cb.dirpath) / "last.ckpt")
    return None


def emit_event(trainer: L.Trainer, record: dict[str, Any], metrics: dict[str, float]) -> None:
    """One event: a line in the spike monitor's JSONL (when there is one) and `metrics` in every logger."""
    from bitnet_train.lit.callbacks.spike_monitor import SpikeMonitor

    for cb in trainer.callbacks:
        if isinstance(cb, SpikeMonitor):
            cb._write(record)
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=int(record["step"]))


class NonFiniteGuard(L.Callback):
    def __init__(self, policy: str = "stop", max_consecutive_skips: int = 3, clean_stale_temporaries: bool = True) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"callbacks.faults.policy={policy!r} is not one of {', '.join(POLICIES)}")
        if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int) or max_consecutive_skips < 1:
            raise ConfigError(f"callbacks.faults.max_consecutive_skips={max_consecutive_skips!r} must be an integer >= 1")
        self.policy, self.max_consecutive_skips = policy, max_consecutive_skips
        self.clean_stale_temporaries = clean_stale_temporaries
        self.consecutive = 0
        self.skipped: list[int] = []
        self._loss: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "skipped": list(self.skipped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.skipped = list(state_dict.get("skipped", []))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.clean_stale_temporaries or not trainer.is_global_zero:
            return
        folders = {Path(trainer.default_root_dir)}
        folders |= {Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath}
        for folder in folders:
            for path in remove_stale_temporaries(folder):
                log.warning("removed %s, a checkpoint write cut short by a killed run", path)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        loss, self._loss = self._loss, None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        flags = [torch.isfinite(loss).all()] if loss is not None else []
        if grads:
            flags.append(torch.stack([n.float() for n in torch._foreach_norm(grads)]).isfinite().all())
        finite = bool(torch.stack(flags).all()) if flags else True
        if trainer.world_size > 1:  # every rank takes the same decision (losses are per rank)
            finite = bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
        if finite:
            self.consecutive = 0
            return
        step = trainer.global_step
        loss_value = float(loss) if loss is not None else math.nan
        self.consecutive += 1
        if self.policy == "stop" or self.consecutive > self.max_consecutive_skips:
            last = last_good_checkpoint(trainer)
            why = ("" if self.policy == "stop" else
                   f" after {self.consecutive - 1} skipped step(s) in a row (max_consecutive_skips={self.max_consecutive_skips})")
            raise NonFiniteTrainingError(
                f"non-finite loss/gradients at step {step} (loss {loss_value}){why}; no update applied; last good "
                f"checkpoint: {last or 'none written yet'}; lower optim.lr or resume from it with ckpt_path=auto")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped.append(step)
        log.warning("non-finite loss/gradients at step %d (loss %s): update skipped (%d in a row)", step, loss_value,
                    self.consecutive)
        emit_event(trainer, {"event": "nonfinite_skip", "step": step, "loss": None if not math.isfinite(loss_value)
                             else loss_value, "consecutive": self.consecutive},
                   {"faults/nonfinite_skip": 1.0})
