"""Checkpoint and requeue a Slurm job on its warning signal, at a step boundary every rank shares.

Lightning's Slurm support (SLURMEnvironment, auto-requeue) saves `hpc_ckpt_N.ckpt` into the run
folder from inside the SIGUSR1 handler and runs `scontrol requeue`; the restarted job resumes from
that file. With several processes the handler's checkpoint (which ends in a barrier) can interrupt
one rank while another waits in a gradient all-reduce, and both wait forever (it happened with 2
CPU tasks under Slurm). This callback keeps Lightning's files and resume path but moves the work to
a safe point, as Lightning itself handles SIGTERM: the handler only sets a flag; after every
optimizer step the ranks all-reduce it, and if any rank was signalled all save the same checkpoint
together, rank 0 requeues the job, and training stops. The task then skips the end-of-run work (tasks/trainer.py).
(With it, the trainer builder turns Lightning's own SIGUSR1 handler off: SLURMEnvironment(auto_requeue=False).)

After the requeue checkpoint the fit writes no other: ModelCheckpoint's end-of-training `last.ckpt`
(written when no last.ckpt was saved during the fit) would be the newest file of the run folder, and
it records the epoch as finished, so the requeued job (`ckpt_path=auto`) would resume from it into a
new epoch instead of the preempted step. Whether it got written raced with Slurm ending the job.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)


class SlurmRequeue(L.Callback):
    """Active only inside a Slurm job (SLURMEnvironment.detect()); a no-op elsewhere."""

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        if not hasattr(signal, signal_name):
            raise ValueError(f"signal_name={signal_name!r} is not a signal of this system (e.g. SIGUSR1)")
        self.signum = getattr(signal, signal_name)
        self.signalled = False
        self.requeued = False
        self._last_step = -1
        self._previous_handler: Any = None
        self._held_save_last: list[tuple[ModelCheckpoint, Any]] = []

    @staticmethod
    def active() -> bool:
        """Inside a Slurm job step, as Lightning's SLURMEnvironment.detect() decides, without its warning that
        srun is installed but not used (printed on every machine that has Slurm's client)."""
        return "SLURM_NTASKS" in os.environ and SLURMEnvironment.job_name() not in ("bash", "interactive")

    def _handler(self, signum, frame) -> None:
        self.signalled = True  # nothing else here: the checkpoint is taken at the next step boundary

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.active():
            self._previous_handler = signal.signal(self.signum, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None
        for callback, save_last in self._held_save_last:
            callback.save_last = save_last
        self._held_save_last = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._previous_handler is None or trainer.global_step == self._last_step:
            return  # not in Slurm, or inside gradient accumulation (no optimizer step yet)
        self._last_step = trainer.global_step
        flag = torch.tensor(float(self.signalled), device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="max")) == 0.0:  # collective: same step on every rank
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        log.info("Slurm warning signal: saving %s at step %d and requeueing", path, trainer.global_step)
        trainer.save_checkpoint(path)  # every rank, together
        if trainer.is_global_zero:
            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode:
                log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
        self.requeued = True
        for callback in trainer.checkpoint_callbacks:  # the requeue checkpoint stays the run's newest
            if isinstance(callback, ModelCheckpoint):
                self._held_save_last.append((callback, callback.save_last))
                callback.save_last = False
        trainer.should_stop = True
