"""The streaming path on local files: same blocks as the cached path, deterministic, resumable."""

from __future__ import annotations

from itertools import islice
from types import SimpleNamespace

import torch

from bitnet_train.data import CausalLMDataModule
from bitnet_train.data.streaming import StreamingBlocks


def _module(small_corpus, make_cfg, **cfg):
    dm = CausalLMDataModule(make_cfg(files=str(small_corpus), **cfg))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _ids(loader, n):
    return [b["input_ids"].clone() for b in islice(iter(loader), n)]


def test_streamed_blocks_equal_the_cached_blocks(small_corpus, make_cfg):
    cached = _module(small_corpus, make_cfg)
    streaming = _module(small_corpus, make_cfg, streaming=True)
    assert streaming.train_blocks is None and streaming.stats()["train_blocks"] is None

    def packed(validation):
        cfg = streaming.cfg
        return StreamingBlocks(streaming.documents.dataset, streaming.tokenizer, cfg.seq_len + 1,
                               val_fraction=cfg.val_fraction, validation=validation, seed=cfg.seed,
                               batch_size=cfg.batch_size).packed()

    train = [b.tolist() for b in packed(False)]
    assert train == [cached.train_blocks.block(i).tolist() for i in range(len(cached.train_blocks))]
    val = [b.tolist() for b in islice(packed(True), len(cached.val_blocks))]
    assert val == [cached.val_blocks.block(i).tolist() for i in range(len(cached.val_blocks))]
    assert streaming.unigram_perplexity() == cached.unigram_perplexity()


def test_streaming_train_batches_deterministic_and_resumable(small_corpus, make_cfg):
    dm = _module(small_corpus, make_cfg, streaming=True)
    full = _ids(dm.train_dataloader(), 10)
    assert full[0].shape == (4, 32) and full[0].dtype == torch.long
    assert all(torch.equal(a, b) for a, b in zip(full, _ids(dm.train_dataloader(), 10), strict=True))
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    dm.trainer = SimpleNamespace(global_step=2, accumulate_grad_batches=2, global_rank=0, world_size=1)
    assert all(torch.equal(a, b) for a, b in zip(_ids(dm.train_dataloader(), 6), full[4:], strict=True))


def test_streaming_resume_with_workers(small_corpus, make_cfg):
    dm = _module(small_corpus, make_cfg, streaming=True, num_workers=2)
    full = _ids(dm.train_dataloader(), 5)
    dm.trainer = SimpleNamespace(global_step=3, accumulate_grad_batches=1, global_rank=0, world_size=1)
    assert all(torch.equal(a, b) for a, b in zip(_ids(dm.train_dataloader(), 2), full[3:], strict=True))


def test_streaming_ranks_and_validation(small_corpus, make_cfg):
    dm = _module(small_corpus, make_cfg, streaming=True, max_val_blocks=7)
    single_val = torch.cat([b["input_ids"] for b in dm.val_dataloader()])
    assert single_val.shape[0] == 7
    trains, vals = [], []
    for rank in range(2):
        dm.trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, global_rank=rank, world_size=2)
        trains.append(_ids(dm.train_dataloader(), 2))
        vals.append(torch.cat([b["input_ids"] for b in dm.val_dataloader()]))
    assert not torch.equal(trains[0][0], trains[1][0])
    assert vals[0].shape[0] == vals[1].shape[0] == 3  # 7 capped to 6 = 3 rounds of 2 ranks
    assert torch.equal(torch.stack([vals[0], vals[1]], 1).reshape(6, -1), single_val[:6])
