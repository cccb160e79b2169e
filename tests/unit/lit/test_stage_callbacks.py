"""The progress bar counts optimizer steps of max_steps and shows the stage; the stage is in every checkpoint."""

from __future__ import annotations

import lightning as L
import torch

from bitnet_train.lit.callbacks import StageCallback, StepProgressBar


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)


def test_stage_in_progress_bar_and_checkpoint(tmp_path):
    bar, stage = StepProgressBar(), StageCallback(2, "continual pre-training")
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar, stage], default_root_dir=tmp_path)
    module = Tiny()
    trainer.fit(module)
    assert module.stage_label == "2/3 continual pre-training"
    items = bar.get_metrics(trainer, module)
    assert list(items)[0] == "stage" and items["stage"] == "2/3 continual pre-training"
    assert trainer.callback_metrics["stage"] == 2.0
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert saved["distill"] == {"stage": 2, "name": "continual pre-training", "max_steps": 2}
    plain = Tiny()
    assert "stage" not in bar.get_metrics(trainer, plain)


class _ReadBar(L.Callback):
    def __init__(self, bar: StepProgressBar) -> None:
        self.bar, self.seen = bar, None

    def on_train_end(self, trainer, pl_module):
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.seen = (task.description.strip(), task.total, task.completed)


def test_progress_bar_counts_optimizer_steps_of_max_steps(tmp_path):
    """Under gradient accumulation the bar advances once per optimizer step, to trainer.max_steps (not batches
    of an epoch, which read "Epoch 0/-2" on an endless stream)."""
    bar = StepProgressBar()
    probe = _ReadBar(bar)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[bar, probe],
                        default_root_dir=tmp_path)
    trainer.fit(Tiny())
    description, total, completed = probe.seen
    assert description.endswith("Step") and "Epoch" not in description
    assert (total, completed) == (3, 3)
