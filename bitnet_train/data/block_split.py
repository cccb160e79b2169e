"""Train/validation split by blocks, for corpora whose documents are too few to split by document.

A text with no blank lines is one "paragraph" (one document under data.sample_by=paragraph): the
document-hash split puts all of it on one side and the other side is empty. Then the packed token
stream of all documents is cut into blocks and the last ceil(val_fraction * blocks) of them (at
least one, at most max_val_blocks) become validation, the blocks before them training: the two
never share a token. The data module does this only when the document split leaves a split
without a single block, and says so.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bitnet_train.data.packing import PackedBlocks


class BlockRange(torch.utils.data.Dataset):
    """Blocks [first, first + count) of a PackedBlocks, with the same interface the data module uses."""

    def __init__(self, blocks: PackedBlocks, first: int, count: int) -> None:
        self.blocks, self.first, self.num_blocks = blocks, int(first), int(count)
        self.block_len = blocks.block_len
        self.num_documents = blocks.num_documents
        self.num_tokens = self.num_blocks * self.block_len

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range [0, {self.num_blocks})")
        return self.blocks[self.first + int(index)]

    def _tokens(self) -> np.ndarray:
        start = self.first * self.block_len
        return self.blocks.read(start, start + self.num_tokens).reshape(self.num_blocks, self.block_len)

    def token_counts(self, vocab_size: int) -> np.ndarray:
        return np.bincount(self._tokens().ravel(), minlength=vocab_size)

    def label_counts(self, vocab_size: int) -> np.ndarray:
        return np.bincount(self._tokens()[:, 1:].ravel(), minlength=vocab_size)


def split_by_blocks(tokenized, block_len: int, val_fraction: float,
                    max_val_blocks: int | None) -> tuple[BlockRange, BlockRange] | None:
    """(train, validation) cut from the blocks of every document, or None if there are fewer than 2 blocks."""
    everything = PackedBlocks(tokenized, np.ones(len(tokenized), dtype=bool), block_len)
    total = len(everything)
    if total < 2:
        return None
    n_val = min(max(1, math.ceil(val_fraction * total)), total - 1)
    if max_val_blocks is not None:
        n_val = min(n_val, int(max_val_blocks))
    return BlockRange(everything, 0, total - n_val), BlockRange(everything, total - n_val, n_val)
