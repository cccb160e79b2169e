"""Stage-3 data: the project's data module, with each training item's index in the batch.

The index (`batch["index"]`, a block or example number of the training set) is what the teacher-logit
cache is keyed by. `visited_items` lists the items a rank's training stream reads in a range of steps:
the stream is a pure function of (seed, step, rank), so the cache can be filled before training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from bitnet_train.data import CausalLMDataModule
from bitnet_train.data.sampler import InfiniteBlockSampler


class IndexedItems(Dataset):
    """A training set whose items also carry their own index; other attributes pass through."""

    def __init__(self, items: Any) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.items[index], "index": torch.tensor(int(index), dtype=torch.long)}

    def __getattr__(self, name: str) -> Any:
        if name == "items":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.items, name)


class DistillDataModule(CausalLMDataModule):
    """CausalLMDataModule whose training batches include `index` (packed text or prompt/answer layout)."""

    def _build(self) -> None:
        fresh = self.documents is None
        super()._build()
        if fresh and self.train_blocks is not None and not isinstance(self.train_blocks, IndexedItems):
            self.train_blocks = IndexedItems(self.train_blocks)

    def visited_items(self, first_step: int, end_step: int, accumulate: int = 1, rank: int = 0,
                      world_size: int = 1) -> list[int]:
        """Training items this rank reads in optimizer steps [first_step, end_step), sorted, without repeats."""
        self._build()
        cfg = self.cfg
        sampler = InfiniteBlockSampler(len(self.train_blocks), cfg.batch_size, cfg.seed, rank, world_size)
        seen: set[int] = set()
        cache: dict = {}
        for micro_batch in range(first_step * accumulate, end_step * accumulate):
            seen.update(sampler.batch(micro_batch, cache))
            if len(seen) == len(self.train_blocks):
                break
        return sorted(seen)
