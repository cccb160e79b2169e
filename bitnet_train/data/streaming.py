"""Streaming path (`data.streaming=True`): pack documents into blocks on the fly.

Nothing is tokenized up front. Training: documents are dealt round-robin to (rank, worker)
shards, each shard tokenizes only its own, packs them into blocks of seq_len + 1, shuffles them
in a buffer seeded by (seed, shard) and repeats its documents forever. The stream is
deterministic for a fixed number of ranks and workers; resuming re-reads (and re-tokenizes) the
skipped part. Validation: every rank packs the same hash-selected documents in order, keeps
every world_size-th block, and workers take alternate batches, so there are no duplicates.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bitnet_train.config import ConfigError
from bitnet_train.data.packing import doc_hash, encode_documents, val_threshold
from bitnet_train.data.tokenizer import Tokenizer

_DOC_BATCH = 256


def _item(block: np.ndarray) -> dict[str, torch.Tensor]:
    tensor = torch.from_numpy(block.astype(np.int64))
    return {"input_ids": tensor[:-1], "labels": tensor[1:]}


def _shuffled(blocks: Iterator[np.ndarray], rng: np.random.Generator, size: int) -> Iterator[np.ndarray]:
    buffer: list[np.ndarray] = []
    for block in blocks:
        if len(buffer) < size:
            buffer.append(block)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = block
    rng.shuffle(buffer)
    yield from buffer


class StreamingBlocks(IterableDataset):
    """Blocks of `block_len` tokens packed from a (streaming) document dataset.

    `validation=False`: endless, shuffled training blocks for one rank, starting after
    `start` of its micro-batches (set by `StartAwareLoader` when iteration begins).
    `validation=True`: one ordered pass, at most `max_blocks` blocks over all ranks.
    """

    def __init__(self, documents: Any, tokenizer: Tokenizer, block_len: int, *, val_fraction: float,
                 validation: bool, seed: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 max_blocks: int | None = None, shuffle_buffer: int = 1024) -> None:
        super().__init__()
        self.documents, self.tokenizer, self.block_len = documents, tokenizer, int(block_len)
        self.threshold = val_threshold(val_fraction)
        self.validation, self.seed, self.batch_size = validation, int(seed), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.max_blocks, self.shuffle_buffer = max_blocks, int(shuffle_buffer)
        self.start = 0

    def packed(self, shard: int = 0, num_shards: int = 1, repeat: bool = False) -> Iterator[np.ndarray]:
        """Blocks from this split's documents whose index i satisfies i % num_shards == shard."""
        pending = np.zeros(0, dtype=np.int64)
        while True:
            index, produced = 0, False
            for batch in self.documents.iter(batch_size=_DOC_BATCH):
                texts = batch["text"]
                mine = [t for i, t in enumerate(texts, index) if i % num_shards == shard and t]
                index += len(texts)
                mine = [t for t in mine if (doc_hash(t) < self.threshold) == self.validation]
                ids, _ = encode_documents(mine, self.tokenizer)
                if not ids:
                    continue
                produced = True
                pending = np.concatenate([pending, np.fromiter((i for doc in ids for i in doc), dtype=np.int64)])
                n = len(pending) // self.block_len
                for k in range(n):
                    yield pending[k * self.block_len:(k + 1) * self.block_len]
                pending = pending[n * self.block_len:]
            if not repeat:
                return
            if not produced:
                split = "validation" if self.validation else "training"
                raise ConfigError(
                    f"streaming shard {shard} of {num_shards} received no {split} documents; "
                    "use fewer data.num_workers or ranks, or more documents")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._validation(worker, workers) if self.validation else self._training(worker, workers)

    def _training(self, worker: int, workers: int) -> Iterator[dict[str, torch.Tensor]]:
        # The DataLoader takes micro-batch m from worker m % workers; after resuming at `start`,
        # worker w must continue the stream that worker (w + start) % workers produced before.
        role = (worker + self.start) % workers
        skip = max(0, -(-(self.start - role) // workers)) * self.batch_size
        shard, num_shards = self.rank * workers + role, self.world_size * workers
        rng = np.random.default_rng([self.seed, shard])
        blocks = _shuffled(self.packed(shard, num_shards, repeat=True), rng, self.shuffle_buffer)
        for i, block in enumerate(blocks):
            if i >= skip:
                yield _item(block)

    def _validation(self, worker: int, workers: int) -> Iterator[dict[str, torch.Tensor]]:
        cap = None if self.max_blocks is None else self.max_blocks // self.world_size * self.world_size
        round_: list[np.ndarray] = []
        total = local = 0
        for block in self.packed():
            if cap is not None and total >= cap:
                return
            round_.append(block)
            total += 1
            if len(round_) == self.world_size:  # a full round: one block per rank, none repeated
                if (local // self.batch_size) % workers == worker:
                    yield _item(round_[self.rank])
                local += 1
                round_ = []


class StartAwareLoader(DataLoader):
    """A DataLoader that tells its StreamingBlocks where to start each time iteration begins."""

    def __init__(self, dataset: StreamingBlocks, start: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._start_fn = start

    def __iter__(self):  # type: ignore[override]
        self.dataset.start = int(self._start_fn())
        return super().__iter__()
