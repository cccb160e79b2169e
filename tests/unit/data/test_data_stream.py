"""The training stream: deterministic, resumable at any micro-batch, sharded exactly across ranks."""

from __future__ import annotations

from itertools import islice
from types import SimpleNamespace

import pytest
import torch

from bitnet_train.data import CausalLMDataModule
from bitnet_train.data.sampler import InfiniteBlockSampler


def _take(sampler, n):
    return list(islice(iter(sampler), n))


def test_sampler_is_deterministic_and_reshuffles_each_pass():
    a, b = InfiniteBlockSampler(10, 2, seed=7), InfiniteBlockSampler(10, 2, seed=7)
    assert _take(a, 20) == _take(b, 20)
    assert _take(InfiniteBlockSampler(10, 2, seed=8), 5) != _take(a, 5)
    flat = [i for batch in _take(a, 15) for i in batch]
    passes = [flat[k:k + 10] for k in (0, 10, 20)]
    assert all(sorted(p) == list(range(10)) for p in passes)  # each pass covers every block once
    assert passes[0] != passes[1] != passes[2]


@pytest.mark.parametrize("k", [0, 1, 4, 13])
def test_sampler_start_is_the_tail_of_the_stream(k):
    full = _take(InfiniteBlockSampler(7, 3, seed=1), k + 10)
    assert _take(InfiniteBlockSampler(7, 3, seed=1, start=k), 10) == full[k:]
    assert _take(InfiniteBlockSampler(7, 3, seed=1, start=lambda: k), 10) == full[k:]


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_ranks_split_the_global_batch(world):
    one = _take(InfiniteBlockSampler(11, 2 * world, seed=3), 12)
    ranks = [_take(InfiniteBlockSampler(11, 2, seed=3, rank=r, world_size=world), 12) for r in range(world)]
    for m in range(12):
        assert sum((ranks[r][m] for r in range(world)), []) == one[m]


def _trainer(step=0, accumulate=1, rank=0, world=1):
    return SimpleNamespace(global_step=step, accumulate_grad_batches=accumulate, global_rank=rank, world_size=world)


def _batches(dm, n):
    return [{k: v.clone() for k, v in b.items()} for b in islice(iter(dm.train_dataloader()), n)]


@pytest.fixture
def built(small_corpus, make_cfg):
    def build(**cfg):
        dm = CausalLMDataModule(make_cfg(files=str(small_corpus), **cfg))
        dm.setup("fit")
        return dm

    return build


def test_train_batches_are_shifted_blocks_and_deterministic(built):
    dm = built()
    first, again = _batches(dm, 5), _batches(built(), 5)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    batch = first[0]
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 32) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert not torch.equal(first[0]["input_ids"], _batches(built(seed=99), 1)[0]["input_ids"])


def test_resume_starts_at_global_step_times_accumulation(built):
    dm = built()
    full = _batches(dm, 12)
    dm.trainer = _trainer(step=3, accumulate=2)
    assert dm.start_micro_batch() == 6
    resumed = _batches(dm, 6)
    for a, b in zip(resumed, full[6:], strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])


def test_two_ranks_take_disjoint_halves_of_the_global_batch(built):
    one = _batches(built(batch_size=8), 6)
    parts = []
    for rank in range(2):
        dm = built(batch_size=4)
        dm.trainer = _trainer(rank=rank, world=2)
        parts.append(_batches(dm, 6))
    for m in range(6):
        joined = torch.cat([parts[0][m]["input_ids"], parts[1][m]["input_ids"]])
        assert torch.equal(joined, one[m]["input_ids"])


def test_workers_do_not_change_the_stream(built):
    assert all(torch.equal(a["input_ids"], b["input_ids"])
               for a, b in zip(_batches(built(), 4), _batches(built(num_workers=1), 4), strict=True))


def test_validation_is_fixed_and_sharded_without_duplicates(built):
    dm = built(max_val_blocks=9)
    assert len(dm.val_blocks) == 9
    single = torch.cat([b["input_ids"] for b in dm.val_dataloader()])
    assert single.shape[0] == 9
    shards = []
    for rank in range(2):
        dm.trainer = _trainer(rank=rank, world=2)
        shards.append(torch.cat([b["input_ids"] for b in dm.val_dataloader()]))
    assert shards[0].shape[0] == shards[1].shape[0] == 4  # 9 blocks -> 4 + 4, one left out
    assert torch.equal(torch.cat(shards), single[:8])


def test_stats(built):
    stats = built().stats()
    assert stats["tokenizer"] == "austen_sp4096" and stats["vocab_size"] == 4096 and stats["seq_len"] == 32
    assert stats["train_tokens"] == stats["train_blocks"] * 32 and stats["val_blocks"] >= 1
    assert stats["train_documents"] > 10 * stats["val_documents"] > 0


def test_lightning_resume_continues_the_stream(built, tmp_path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["input_ids"][:, 0].clone())
            return (self.weight * batch["input_ids"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(max_steps, ckpt=None):
        trainer = L.Trainer(max_steps=max_steps, accumulate_grad_batches=2, use_distributed_sampler=False,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
        model = Recorder()
        trainer.fit(model, datamodule=built(), ckpt_path=ckpt)
        return trainer, model.seen

    trainer, first = fit(2)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    _, rest = fit(4, str(tmp_path / "step2.ckpt"))
    _, whole = fit(4)
    assert len(first) == 4 and len(rest) == 4 and len(whole) == 8
    assert all(torch.equal(a, b) for a, b in zip(first + rest, whole, strict=True))
