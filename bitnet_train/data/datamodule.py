"""LightningDataModule for causal language modelling on packed token blocks.

Training data is an endless stream of micro-batches whose order depends only on (seed, epoch);
it starts at micro-batch `trainer.global_step * trainer.accumulate_grad_batches`, so a run resumed
from a checkpoint continues exactly where it stopped, and it shards itself across ranks (use the
Trainer with `use_distributed_sampler=False`). Validation is a fixed, rank-sharded set of blocks.
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from bitnet_train.config import ConfigError, DataConfig, from_mapping
from bitnet_train.data.block_split import split_by_blocks
from bitnet_train.data.examples import Examples, load_pairs, pairs_fingerprint, tokenize_pairs
from bitnet_train.data.packing import (PackedBlocks, cache_fingerprint, tokenize_documents, unigram_perplexity,
                                       validation_mask)
from bitnet_train.data.sampler import InfiniteBlockSampler
from bitnet_train.data.sources import Documents, load_documents
from bitnet_train.data.streaming import StartAwareLoader, StreamingBlocks
from bitnet_train.data.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)
STREAM_UNIGRAM_BLOCKS = 2048
"""Streaming: training blocks read to estimate the unigram distribution."""


class CausalLMDataModule(L.LightningDataModule):
    """Batches `{"input_ids": LongTensor[B, S], "labels": LongTensor[B, S]}` with B = data.batch_size
    (plus `attention_mask` [B, S] for data.layout=prompt_answer, whose labels are -100 outside answers)."""

    def __init__(self, cfg: DataConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg if isinstance(cfg, DataConfig) else from_mapping(DataConfig, "data", cfg)
        self._tokenizer: Tokenizer | None = None
        self.documents: Documents | None = None
        """The loaded documents (dataset, cache fingerprint, description); None before setup."""
        self.tokenized: Any = None
        """The cached tokenized documents (datasets.Dataset); None when streaming."""
        self.train_blocks: PackedBlocks | None = None
        self.val_blocks: PackedBlocks | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.tokenizer)
        return self._tokenizer

    def prepare_data(self) -> None:
        """Check the inputs and tokenize them into the cache (Lightning calls this on one process per node)."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        """Load the cached tokens and cut the train/validation blocks (every process)."""
        self._build()

    def _build(self) -> None:
        if self.documents is not None:
            return
        cfg, tok = self.cfg, self.tokenizer
        if cfg.layout == "prompt_answer":
            self._build_examples()
            return
        documents = load_documents(cfg)
        if not cfg.streaming:
            tokenized = tokenize_documents(documents.dataset, tok, cache_fingerprint(documents.fingerprint, tok))
            hashes = tokenized.data.column("doc_hash").to_numpy()
            val = validation_mask(hashes, cfg.val_fraction)
            train_blocks = PackedBlocks(tokenized, ~val, cfg.seq_len + 1)
            val_blocks = PackedBlocks(tokenized, val, cfg.seq_len + 1, max_blocks=cfg.max_val_blocks)
            if len(train_blocks) == 0 or len(val_blocks) == 0:  # too few documents to split by document
                split = split_by_blocks(tokenized, cfg.seq_len + 1, cfg.val_fraction, cfg.max_val_blocks)
                if split is not None:
                    log.warning(
                        "data: %d document(s) do not split into training and validation by document (data.sample_by=%s); "
                        "split by blocks instead: the last %d of %d blocks are validation. A text without blank lines "
                        "is one paragraph: data.sample_by=line makes each line a document", len(hashes), cfg.sample_by,
                        len(split[1]), len(split[0]) + len(split[1]))
                    train_blocks, val_blocks = split
            for split_name, blocks in (("training", train_blocks), ("validation", val_blocks)):
                if len(blocks) == 0:
                    raise ConfigError(
                        f"the {split_name} split has {blocks.num_tokens} tokens in {blocks.num_documents} document(s), "
                        f"less than one block of data.seq_len + 1 = {cfg.seq_len + 1}; lower data.seq_len, add text"
                        + (" or raise data.val_fraction" if split_name == "validation" else ""))
            self.tokenized, self.train_blocks, self.val_blocks = tokenized, train_blocks, val_blocks
        self.documents = documents
        log.info("data: %s", self.stats())

    def _build_examples(self) -> None:
        """data.layout=prompt_answer: one padded example per record (data/examples.py)."""
        cfg, tok = self.cfg, self.tokenizer
        documents = load_pairs(cfg)
        tokenized = tokenize_pairs(documents.dataset, tok, pairs_fingerprint(documents.fingerprint, tok))
        val = validation_mask(tokenized.data.column("doc_hash").to_numpy(), cfg.val_fraction)
        self.train_blocks = Examples(tokenized, ~val, cfg.seq_len, tok.pad_id)
        self.val_blocks = Examples(tokenized, val, cfg.seq_len, tok.pad_id, max_items=cfg.max_val_blocks)
        for split, examples in (("training", self.train_blocks), ("validation", self.val_blocks)):
            if len(examples) == 0:
                raise ConfigError(f"the {split} split has no prompt/answer records ({documents.description}); "
                                  "add records or change data.val_fraction")
        self.tokenized, self.documents = tokenized, documents
        log.info("data: %s", self.stats())

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def start_micro_batch(self) -> int:
        """Where the training stream starts: micro-batches already consumed by the attached trainer."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.global_step) * int(trainer.accumulate_grad_batches)

    def _streaming(self, validation: bool, rank: int = 0, world: int = 1) -> StreamingBlocks:
        cfg = self.cfg
        return StreamingBlocks(self.documents.dataset, self.tokenizer, cfg.seq_len + 1, val_fraction=cfg.val_fraction,
                               validation=validation, seed=cfg.seed, batch_size=cfg.batch_size, rank=rank,
                               world_size=world, max_blocks=cfg.max_val_blocks if validation else None)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {"num_workers": self.cfg.num_workers, "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self) -> DataLoader:
        """Endless micro-batches of this rank, starting at `start_micro_batch()` (read when iteration begins)."""
        self._build()
        cfg, (rank, world) = self.cfg, self._rank_world()
        if cfg.streaming:
            blocks = self._streaming(validation=False, rank=rank, world=world)
            return StartAwareLoader(blocks, self.start_micro_batch, batch_size=cfg.batch_size, **self._loader_kwargs())
        sampler = InfiniteBlockSampler(len(self.train_blocks), cfg.batch_size, cfg.seed, rank, world,
                                       start=self.start_micro_batch)
        return DataLoader(self.train_blocks, batch_sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """Validation blocks in fixed order; each rank takes its own contiguous share, none repeated."""
        self._build()
        cfg, (rank, world) = self.cfg, self._rank_world()
        if cfg.streaming:
            blocks = self._streaming(validation=True, rank=rank, world=world)
            return DataLoader(blocks, batch_size=cfg.batch_size, **self._loader_kwargs())
        # Equal shares (the few leftover blocks are dropped) so that no rank waits for another.
        share = len(self.val_blocks) // world
        if share == 0:
            raise ConfigError(
                f"the validation split has {len(self.val_blocks)} blocks for {world} ranks; raise data.val_fraction "
                "or data.max_val_blocks, or lower data.seq_len")
        indices = range(rank * share, (rank + 1) * share)
        return DataLoader(Subset(self.val_blocks, indices), batch_size=cfg.batch_size, shuffle=False,
                          **self._loader_kwargs())

    def unigram_perplexity(self) -> float:
        """Validation perplexity of the add-one smoothed unigram model of the training tokens.

        Training counts cover every token of the training blocks; validation counts the targets
        (labels) of the validation blocks. A trained model must do better than this. When
        streaming, training counts are estimated from the first STREAM_UNIGRAM_BLOCKS blocks.
        """
        self._build()
        vocab = self.tokenizer.vocab_size
        if not self.cfg.streaming:
            return unigram_perplexity(self.train_blocks.token_counts(vocab), self.val_blocks.label_counts(vocab))
        train = np.zeros(vocab, dtype=np.int64)
        for block in islice(self._streaming(validation=False).packed(), STREAM_UNIGRAM_BLOCKS):
            train += np.bincount(block, minlength=vocab)
        val = np.zeros(vocab, dtype=np.int64)
        for block in islice(self._streaming(validation=True).packed(), self.cfg.max_val_blocks):
            val += np.bincount(block[1:], minlength=vocab)
        return unigram_perplexity(train, val)

    def stats(self) -> dict[str, Any]:
        """Sizes of the data: blocks, documents, tokens (targets = blocks * seq_len), tokenizer.

        Block and token counts are None when streaming (not known without reading everything).
        """
        tok = self.tokenizer
        out: dict[str, Any] = {"source": self.documents.description if self.documents else None,
                               "tokenizer": tok.name, "vocab_size": tok.vocab_size, "seq_len": self.cfg.seq_len,
                               "streaming": self.cfg.streaming}
        for split, blocks in (("train", self.train_blocks), ("val", self.val_blocks)):
            out[f"{split}_documents"] = None if blocks is None else blocks.num_documents
            out[f"{split}_blocks"] = None if blocks is None else len(blocks)
            out[f"{split}_tokens"] = None if blocks is None else len(blocks) * self.cfg.seq_len
        return out
