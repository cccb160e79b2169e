"""The run's progress bar: optimizer steps out of `trainer.max_steps`, and the stage of a multi-stage run.

Lightning's bar counts the batches of an epoch ("Epoch 0/-2" on an endless stream, micro-batches under
gradient accumulation). Training here is step-based, so this bar counts optimizer steps
(`trainer.global_step`) to `trainer.max_steps`, starting where a resumed run starts, and shows the
module's `stage_label` (BitDistill's "2/3 continual pre-training") before the metrics when it has one.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        label = getattr(self.trainer.lightning_module, "stage_label", None) if self.trainer.lightning_module else None
        description = f"Stage {label}" if label else "Step"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        label = getattr(pl_module, "stage_label", None)
        return {"stage": label, **items} if label else items
