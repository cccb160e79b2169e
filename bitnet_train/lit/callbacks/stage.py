"""Multi-stage runs (BitDistill): the stage in the progress bar, the logs and every checkpoint.

`StageCallback(stage, name, total)` tags each checkpoint with `checkpoint["distill"] = {"stage", "name",
"max_steps"}` (what a resumed run reads to know where to continue), logs the stage number as `stage`
and writes one log line when the stage starts. The progress bar (lit/callbacks/progress.py) shows the
module's `stage_label`.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class StageCallback(L.Callback):
    def __init__(self, stage: int, name: str, total: int = 3) -> None:
        self.stage, self.name, self.total = int(stage), name, int(total)

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.total} {self.name}"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.stage_label = self.label

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.info("stage %s: steps %d..%d", self.label, trainer.global_step, trainer.max_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pl_module.log("stage", float(self.stage), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["distill"] = {"stage": self.stage, "name": self.name, "max_steps": int(trainer.max_steps)}
