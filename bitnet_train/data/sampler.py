"""An endless, resumable, rank-sharded order of training blocks.

Global stream position p (0, 1, 2, ...) is block `perm(seed, epoch)[p % N]` with epoch = p // N: a
fresh permutation per pass over the data. Global micro-batch m covers positions
[m * B * W, (m + 1) * B * W); rank r takes its slice [r * B, (r + 1) * B) of it, so W ranks
together see exactly the blocks one rank with batch B * W would see. Iteration starts at a
micro-batch given at iteration time (the trainer's step on resume): no extra state to checkpoint.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler


class InfiniteBlockSampler(Sampler[list[int]]):
    """Batch sampler yielding this rank's block indices for micro-batches start, start+1, ... forever.

    A Sampler (rather than an IterableDataset) keeps the order in the main process: it does not
    depend on `num_workers`, workers only fetch the blocks. It has no `__len__` (the stream never
    ends; training length is set by the trainer's max_steps).
    """

    def __init__(self, num_blocks: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int | Callable[[], int] = 0) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be > 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_blocks, self.batch_size, self.seed = int(num_blocks), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self._start = start

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of all blocks in pass `epoch` (a function of seed and epoch only)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def batch(self, micro_batch: int, cache: dict[int, np.ndarray] | None = None) -> list[int]:
        """This rank's block indices for global micro-batch `micro_batch`."""
        cache = {} if cache is None else cache
        first = micro_batch * self.batch_size * self.world_size + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_blocks)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            if int(epoch) not in cache:
                for old in [e for e in cache if e < epoch]:
                    del cache[old]
                cache[int(epoch)] = self.permutation(int(epoch))
            where = epochs == epoch
            out[where] = cache[int(epoch)][offsets[where]]
        return out.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        micro_batch = int(self._start() if callable(self._start) else self._start)
        cache: dict[int, np.ndarray] = {}
        while True:
            yield self.batch(micro_batch, cache)
            micro_batch += 1
