"""Tokenize documents once (cached), split them by a hash of their text, and cut blocks.

Each document becomes its token ids followed by EOS (a cached, batched `Dataset.map`). A document
goes to validation when a stable hash of its text falls below `val_fraction`, so the split does not
depend on file order. `PackedBlocks` views the concatenated tokens of one split as blocks of
`seq_len + 1` tokens (inputs block[:-1], labels block[1:]) straight from the memory-mapped cache,
so changing `seq_len` re-cuts the blocks without tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from bitnet_train.config import ConfigError
from bitnet_train.data.tokenizer import Tokenizer

TOKENIZE_VERSION = 1
"""Bump when `encode_documents` changes what it writes (invalidates every cache)."""


def doc_hash(text: str) -> int:
    """A stable 64-bit hash of a document's text (same on every machine and Python run)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def val_threshold(val_fraction: float) -> int:
    """Documents whose `doc_hash` is below this go to validation (hash / 2**64 < val_fraction)."""
    return min(int(val_fraction * 2**64), 2**64 - 1)


def encode_documents(texts: list[str | None], tokenizer: Tokenizer) -> tuple[list[list[int]], list[int]]:
    """Token ids + EOS and text hash of each non-blank document (blank ones are dropped)."""
    kept = [t for t in texts if t and not t.isspace()]
    ids = tokenizer.encode_batch(kept) if kept else []
    return [list(x) + [tokenizer.eos_id] for x in ids], [doc_hash(t) for t in kept]


def cache_fingerprint(documents_fingerprint: str, tokenizer: Tokenizer) -> str:
    """Key of the tokenized cache: the documents' identity, the tokenizer's files and EOS id."""
    identity = {"v": TOKENIZE_VERSION, "documents": documents_fingerprint,
                "tokenizer": tokenizer.fingerprint, "eos": tokenizer.eos_id}
    return "bitnet-tok-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def tokenize_documents(documents: Any, tokenizer: Tokenizer, fingerprint: str) -> Any:
    """datasets.Dataset of documents -> columns `input_ids` (int32, EOS-terminated) and `doc_hash`.

    The result is cached next to the documents' cache files under `fingerprint`: the same inputs
    load it back without tokenizing, any change of `fingerprint` tokenizes again.
    """
    import datasets

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids, hashes = encode_documents(batch["text"], tokenizer)
        return {"input_ids": ids, "doc_hash": np.asarray(hashes, dtype=np.uint64)}  # python ints > 2**63 overflow arrow

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "doc_hash": datasets.Value("uint64")})
    return documents.map(encode, batched=True, batch_size=1000, remove_columns=documents.column_names,
                         features=features, new_fingerprint=fingerprint, desc="Tokenizing documents")


def validation_mask(hashes: np.ndarray, val_fraction: float) -> np.ndarray:
    """True for validation documents: hash / 2**64 < val_fraction.

    If no document falls below the threshold (few, long documents) and there are at least two,
    the one with the smallest hash is used, so validation is never empty by chance.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    mask = hashes < np.uint64(val_threshold(val_fraction))
    if not mask.any() and len(hashes) >= 2:
        mask[int(np.argmin(hashes))] = True
    return mask


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


class PackedBlocks(torch.utils.data.Dataset):
    """Blocks of `block_len` tokens cut from the concatenated tokens of the selected documents.

    Items are `{"input_ids": block[:-1], "labels": block[1:]}` as LongTensors. The token arrays are
    zero-copy views of the memory-mapped cache, rebuilt after pickling (DataLoader workers).
    """

    def __init__(self, tokenized: Any, selected: np.ndarray, block_len: int, max_blocks: int | None = None) -> None:
        if getattr(tokenized, "_indices", None) is not None:
            tokenized = tokenized.flatten_indices()
        self._tokenized = tokenized
        self._selected = np.asarray(selected, dtype=bool)
        self.block_len = int(block_len)
        self._build()
        blocks = int(self.num_tokens // self.block_len)
        self.num_blocks = blocks if max_blocks is None else min(blocks, int(max_blocks))
        self.num_documents = int(self._selected.sum())

    def _build(self) -> None:
        column = self._tokenized.data.column("input_ids")
        self._values: list[np.ndarray] = []
        chunk_of, start, length = [], [], []
        for c, chunk in enumerate(column.chunks):
            offsets = chunk.offsets.to_numpy().astype(np.int64)
            self._values.append(chunk.values.to_numpy(zero_copy_only=True))
            chunk_of.append(np.full(len(offsets) - 1, c, dtype=np.int32))
            start.append(offsets[:-1])
            length.append(np.diff(offsets))
        chunk_of, start, length = _cat(chunk_of, np.int32), _cat(start, np.int64), _cat(length, np.int64)
        if len(length) != len(self._selected):
            raise ValueError(f"selection has {len(self._selected)} entries for {len(length)} documents")
        self._chunk, self._start, self._len = chunk_of[self._selected], start[self._selected], length[self._selected]
        self._cum = np.concatenate([[0], np.cumsum(self._len)]).astype(np.int64)
        self.num_tokens = int(self._cum[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_values", "_chunk", "_start", "_len", "_cum"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build()

    def read(self, begin: int, end: int) -> np.ndarray:
        """Tokens [begin, end) of the concatenated stream, as int64."""
        out = np.empty(end - begin, dtype=np.int64)
        k = int(np.searchsorted(self._cum, begin, side="right")) - 1
        pos = 0
        while pos < len(out):
            offset = begin + pos - int(self._cum[k])
            n = min(len(out) - pos, int(self._len[k]) - offset)
            s = int(self._start[k]) + offset
            out[pos:pos + n] = self._values[self._chunk[k]][s:s + n]
            pos += n
            k += 1
        return out

    def block(self, index: int) -> np.ndarray:
        """Block `index` as int64 tokens of length block_len."""
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range [0, {self.num_blocks})")
        return self.read(index * self.block_len, (index + 1) * self.block_len)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = torch.from_numpy(self.block(int(index)))
        return {"input_ids": block[:-1], "labels": block[1:]}

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """How often each id occurs in the blocks (every token of every block)."""
        used = self.num_blocks * self.block_len
        if used * 4 < self.num_tokens:  # a capped split: read the blocks themselves
            return np.bincount(self.read(0, used), minlength=vocab_size)
        counts = np.zeros(vocab_size, dtype=np.int64)
        for c, values in enumerate(self._values):
            mine = self._chunk == c
            if mine.any():  # mark the selected documents' ranges: +1 at each start, -1 at each end
                edges = np.zeros(len(values) + 1, dtype=np.int64)
                np.add.at(edges, self._start[mine], 1)
                np.add.at(edges, self._start[mine] + self._len[mine], -1)
                counts += np.bincount(values[np.cumsum(edges[:-1]) > 0], minlength=vocab_size)
        if used < self.num_tokens:
            counts -= np.bincount(self.read(used, self.num_tokens), minlength=vocab_size)
        return counts

    def label_counts(self, vocab_size: int) -> np.ndarray:
        """How often each id is a target (block[1:] of every block)."""
        if self.num_blocks == 0:
            return np.zeros(vocab_size, dtype=np.int64)
        blocks = self.read(0, self.num_blocks * self.block_len).reshape(self.num_blocks, self.block_len)
        return np.bincount(blocks[:, 1:].ravel(), minlength=vocab_size)


def unigram_perplexity(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Perplexity of validation tokens under the add-one smoothed unigram distribution of training.

    p(t) = (c_train(t) + 1) / (N_train + V);  ppl = exp(-sum_t c_val(t) log p(t) / N_val).
    """
    train_counts = np.asarray(train_counts, dtype=np.float64)
    val_counts = np.asarray(val_counts, dtype=np.float64)
    if val_counts.sum() == 0:
        raise ConfigError("no validation tokens to compute a unigram perplexity; raise data.val_fraction")
    log_p = np.log(train_counts + 1.0) - math.log(train_counts.sum() + len(train_counts))
    return float(np.exp(-(val_counts * log_p).sum() / val_counts.sum()))
