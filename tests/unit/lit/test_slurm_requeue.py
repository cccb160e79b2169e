"""SlurmRequeue in one process: the warning signal checkpoints at the next step, requeues the job and stops;
nothing written after that checkpoint, so `ckpt_path=auto` resumes the preempted step of the same epoch."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from bitnet_train.lit.callbacks import slurm_requeue
from bitnet_train.lit.callbacks.slurm_requeue import SlurmRequeue
from bitnet_train.lit.run_checkpoints import newest_resumable


class _SignalAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class _FirstBatch(L.Callback):
    seen: tuple[int, int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen is None:
            self.seen = (trainer.current_epoch, batch_idx)


def _trainer(root, *callbacks) -> L.Trainer:
    return L.Trainer(default_root_dir=root, max_steps=12, limit_val_batches=0, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))


def test_requeue_checkpoint_stays_the_newest_and_resumes_mid_epoch(tmp_path, monkeypatch):
    requeued: list[list[str]] = []
    monkeypatch.setattr(SlurmRequeue, "active", staticmethod(lambda: True))
    monkeypatch.setattr(slurm_requeue.subprocess, "run",
                        lambda args, **kw: requeued.append(args) or SimpleNamespace(returncode=0, stderr=""))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    # every_n_train_steps beyond the run: ModelCheckpoint saves no last.ckpt during the fit, so Lightning's
    # end-of-training fallback would write one (epoch marked finished) after the requeue checkpoint
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1000)
    requeue = SlurmRequeue()
    trainer = _trainer(tmp_path, requeue, _SignalAt(3), checkpoint)
    trainer.fit(BoringModel())

    assert requeue.requeued and trainer.global_step == 4  # the step under way when the signal came finished
    assert requeued == [["scontrol", "requeue", "4242"]]
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert checkpoint.save_last is True  # restored once the fit ended
    assert signal.getsignal(signal.SIGUSR1) is not requeue._handler
    resume = newest_resumable(tmp_path)
    assert resume == str(tmp_path / "hpc_ckpt_1.ckpt")
    saved = torch.load(resume, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0  # mid-epoch

    first = _FirstBatch()
    again = _trainer(tmp_path, first, ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True))
    again.fit(BoringModel(), ckpt_path=resume)
    assert first.seen == (0, 4) and again.global_step == 12  # the same epoch, from the preempted batch on
