"""A tiny Lightning module whose batch is a function of the step (exact resume for free) and can be poisoned."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Steps(Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i):
        return torch.zeros(1)


class Poisoned(L.LightningModule):
    """Cross-entropy of a 2-layer net on random tokens drawn from the step; `poison` maps step -> loss factor or nan."""

    def __init__(self, poison: dict[int, float] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 16))
        self.poison = dict(poison or {})
        self.losses: dict[int, float] = {}
        self.before: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, batch, batch_idx):
        self.before[self.global_step] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def training_step(self, batch, batch_idx):
        g = torch.Generator().manual_seed(1000 + self.global_step)
        ids = torch.randint(0, 16, (4, 9), generator=g)
        loss = F.cross_entropy(self.net(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        factor = self.poison.get(self.global_step)
        if factor is not None:
            loss = loss * factor
        self.losses[self.global_step] = float(loss.detach())
        return loss

    def train_dataloader(self):
        return DataLoader(Steps(), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def trainer(tmp_path, callbacks, max_steps: int, **kw) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, callbacks=callbacks, logger=kw.pop("logger", False), enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", devices=1,
                     num_sanity_val_steps=0, limit_val_batches=0, **kw)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
