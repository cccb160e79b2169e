"""DistillModule trains with Lightning: each loss term logged, zero for a student equal to its teacher,
different widths work, and the teacher-logit cache gives the cached (top-k) loss and is filled once."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from bitnet_train.config import ModelConfig, OptimConfig, QuantConfig, to_dict
from bitnet_train.distill.config import DistillStageConfig, BitDistillConfig
from bitnet_train.distill.logit_cache import TeacherLogitCache
from bitnet_train.distill.losses import logit_kl, logit_kl_top_k, teacher_top_k
from bitnet_train.distill.student import load_teacher_weights, student_model_config
from bitnet_train.distill.teacher import load_teacher
from bitnet_train.lit.distill import DistillModule


class Blocks(Dataset):
    def __init__(self, n: int = 8, seq_len: int = 16) -> None:
        self.ids = torch.randint(4, 4096, (n, seq_len + 1), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i, :-1], "labels": self.ids[i, 1:], "index": torch.tensor(i)}


class Data(L.LightningDataModule):
    """In-memory blocks in order, with the stage-3 data module's `visited_items` and `cfg.batch_size`."""

    class cfg:  # noqa: N801 - mimics DataConfig's attribute
        batch_size = 2

    def __init__(self) -> None:
        super().__init__()
        self.train_blocks = Blocks()

    def train_dataloader(self):
        return DataLoader(self.train_blocks, batch_size=self.cfg.batch_size)

    def visited_items(self, first, end, accumulate=1, rank=0, world_size=1):
        return list(range(first * 2, min(end * 2, len(self.train_blocks))))


def _module(teacher, quant: QuantConfig, kd: dict, model: ModelConfig | None = None) -> DistillModule:
    distill = BitDistillConfig(teacher="t", student="teacher" if model is None else "config")
    cfg = student_model_config(teacher, distill, model or ModelConfig())
    module = DistillModule(to_dict(cfg), to_dict(quant), to_dict(OptimConfig(lr=1e-3, warmup_steps=0)),
                           to_dict(DistillStageConfig(**kd)))
    if model is None:
        load_teacher_weights(module.model, teacher.model.state_dict())
    return module


def _fit(module, steps=1, data=None, lr_zero=False):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    if lr_zero:
        module.optim_cfg.lr = 0.0 + 1e-30
    trainer.fit(module, datamodule=data or Data())
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


KD = {"attention": {"layers": [-1], "relation_heads": 8}, "temperature": 2.0}


@pytest.fixture(scope="module")
def teacher(qwen2_teacher):
    return load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))


def test_student_equal_to_teacher_has_zero_distillation_losses(teacher):
    module = _module(teacher, QuantConfig(enabled=False), KD)
    module.attach_teacher(teacher)
    metrics = _fit(module)
    assert metrics["train/logit_kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["train/attn_kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["train/loss"] == pytest.approx(metrics["train/ce"], rel=1e-4)


def test_ternary_student_losses_are_logged_separately_and_combined(teacher):
    module = _module(teacher, QuantConfig(), {**KD, "logit_weight": 10.0, "attention_weight": 100.0})
    module.attach_teacher(teacher)
    batch = Data().train_blocks[0]
    batch = {k: v[None] for k, v in batch.items()}
    with torch.no_grad():
        expected_kl = logit_kl(module(batch["input_ids"]), teacher(batch["input_ids"]).logits, 2.0).item()
    metrics = _fit(module)
    ce, kl, attn = metrics["train/ce"], metrics["train/logit_kl"], metrics["train/attn_kl"]
    assert kl > 0.01 and attn > 1e-4 and ce > 0
    assert metrics["train/loss"] == pytest.approx(ce + 10.0 * kl + 100.0 * attn, rel=1e-4)
    assert kl == pytest.approx(expected_kl, rel=0.5)  # same magnitude as the first-batch KL (other batch items)


def test_narrower_student_learns_relations_from_wider_teacher(teacher):
    model = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, hidden_act="silu")
    module = _module(teacher, QuantConfig(), {**KD, "attention": {"layers": [-1], "relation_heads": 8}}, model)
    module.attach_teacher(teacher)
    assert module.pairs == [(2, 1)]
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    metrics = _fit(module, steps=2)
    assert metrics["train/attn_kl"] > 0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("self_attn.q_proj" in k for k in changed)


def test_teacher_is_not_part_of_the_student_checkpoint(teacher):
    module = _module(teacher, QuantConfig(), KD)
    module.attach_teacher(teacher)
    assert all(k.startswith("model.") for k in module.state_dict())
    assert sum(p.numel() for p in module.parameters()) == module.model.num_parameters()


def test_logit_cache_is_filled_once_and_gives_the_top_k_loss(teacher, tmp_path):
    kd = {"attention_weight": 0.0, "temperature": 2.0, "logit_cache": {"enabled": True, "top_k": 16}}
    cache = TeacherLogitCache(tmp_path, 8, 16, 16, {"teacher": teacher.fingerprint})
    module = _module(teacher, QuantConfig(), kd)
    module.attach_teacher(teacher, cache)
    data = Data()
    # what the first step must compute: the cached top-k KL of batch 0 with the initial student
    batch = {k: torch.stack([data.train_blocks[i][k] for i in (0, 1)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        values, indices, rest = teacher_top_k(teacher(batch["input_ids"]).logits, 16, 2.0)
        expected = logit_kl_top_k(module(batch["input_ids"]), values, indices, rest, 2.0).item()
    metrics = _fit(module, steps=1, data=data)
    assert cache.filled_count() == 2  # one step of 2 items
    assert metrics["train/logit_kl"] == pytest.approx(expected, rel=1e-4)
    stored = cache.load(torch.tensor([0, 1]))
    torch.testing.assert_close(stored[0], values)
    torch.testing.assert_close(stored[1], indices)
    torch.testing.assert_close(stored[2], rest)

    # a later run over steps 0..3 computes only the 6 missing rows, and the teacher is not called in training
    module2 = _module(teacher, QuantConfig(), kd)
    module2.attach_teacher(teacher, TeacherLogitCache(tmp_path, 8, 16, 16, {"teacher": teacher.fingerprint}))
    calls = []
    original = teacher.model.forward
    teacher.model.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    try:
        _fit(module2, steps=4, data=data)
    finally:
        teacher.model.forward = original
    assert module2.cache.filled_count() == 8 and len(calls) == 3  # 6 rows in batches of 2; none while training
    # another teacher (or temperature, data, k) gets its own folder
    other = TeacherLogitCache(tmp_path, 8, 16, 16, {"teacher": "another"})
    assert other.dir != module2.cache.dir and not other.dir.exists()
    other.create()
    with pytest.raises(RuntimeError, match="not in the cache"):
        other.load(torch.tensor([0]))


def test_missing_teacher_is_a_clear_error(teacher):
    module = _module(teacher, QuantConfig(), KD)
    with pytest.raises(RuntimeError, match="attach_teacher"):
        _fit(module)
