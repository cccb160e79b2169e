"""LightningModule for BitDistill's stage 3: the ternary student learns from a frozen teacher.

    L = ce_weight * CE(student) + lambda * KL_tau(teacher logits || student logits)
        + gamma * sum_{Q,K,V} KL(teacher relations || student relations)          (distill/losses.py)

Everything else (the student, AdamW groups, learning-rate schedule, validation perplexity, checkpoint
extras) is the pretraining module's. The teacher is attached with `attach_teacher` and is not a child
module: its weights stay out of checkpoints, the optimizer and distributed wrappers, and it is moved to
the student's device when fitting starts. Each term is logged on its own (train/ce, train/logit_kl,
train/attn_kl; train/loss is the weighted total). With `logit_cache` enabled, the teacher's logits are read
from disk (distill/logit_cache.py) after being computed once, before training, for the items this
process will visit; the teacher then runs only up to the deepest distilled layer, for its Q/K/V states.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from bitnet_train.config import ConfigError, from_mapping, to_dict
from bitnet_train.distill.config import DistillStageConfig
from bitnet_train.distill.logit_cache import TeacherLogitCache
from bitnet_train.distill.losses import attention_relation_loss, logit_kl, logit_kl_top_k, teacher_top_k
from bitnet_train.distill.teacher import StateRecorder, Teacher, relation_pairs
from bitnet_train.lit.pretrain import PretrainModule


class DistillModule(PretrainModule):
    """Next-token CE plus logit and attention-relation distillation from an attached teacher."""

    def __init__(self, model: Mapping[str, Any], quant: Mapping[str, Any], optim: Mapping[str, Any],
                 distill: Mapping[str, Any], compile: bool = False) -> None:
        super().__init__(model, quant, optim, compile=compile)
        self.kd = from_mapping(DistillStageConfig, "distill.stage3", distill)
        self.save_hyperparameters({**self.hparams, "distill": to_dict(self.kd)})
        self.teacher: Teacher | None = None
        self.cache: TeacherLogitCache | None = None
        self.pairs: list[tuple[int, int]] = []
        self._student_states: StateRecorder | None = None

    # ---- teacher ----------------------------------------------------------------------------------
    def attach_teacher(self, teacher: Teacher, cache: TeacherLogitCache | None = None) -> None:
        """Use `teacher` (and optionally a logit cache); checks layers and relation heads, installs hooks."""
        kd, att = self.kd, self.kd.attention
        self.teacher, self.cache = teacher, cache
        student_vocab = self.model.lm_head.out_features
        if kd.logit_weight > 0 and teacher.vocab_size != student_vocab:
            raise ConfigError(f"the teacher's vocabulary ({teacher.vocab_size}) differs from the student's "
                              f"({student_vocab}); logit distillation needs the same one")
        if kd.attention_weight <= 0:
            return
        self.pairs = relation_pairs(teacher.model, self.model, att)
        t_layers, s_layers = sorted({t for t, _ in self.pairs}), sorted({s for _, s in self.pairs})
        teacher.record(t_layers, att.states, att.position)
        if self._student_states is not None:
            self._student_states.remove()
        self._student_states = StateRecorder(self.model, s_layers, att.states, att.position)

    def _require_teacher(self) -> Teacher:
        if self.teacher is None:
            raise RuntimeError("DistillModule has no teacher: call attach_teacher() before fitting")
        return self.teacher

    def on_fit_start(self) -> None:
        self._require_teacher().to(self.device)

    def on_train_start(self) -> None:
        if self.cache is not None and self.kd.logit_weight > 0:
            self.fill_cache()

    @torch.no_grad()
    def fill_cache(self) -> int:
        """Compute the cached teacher logits of every item this process trains on from now to max_steps."""
        trainer, teacher, cache = self.trainer, self._require_teacher(), self.cache
        datamodule = trainer.datamodule
        if trainer.is_global_zero:
            cache.create()
        trainer.strategy.barrier("logit_cache_create")
        cache.open()
        items = datamodule.visited_items(trainer.global_step, trainer.max_steps, trainer.accumulate_grad_batches,
                                         trainer.global_rank, trainer.world_size)
        todo = cache.missing(items)
        batch = datamodule.cfg.batch_size
        recorder, teacher.recorder = teacher.recorder, None  # logits only: no states needed here
        try:
            for start in range(0, len(todo), batch):
                chunk = todo[start:start + batch]
                ids = torch.stack([datamodule.train_blocks[i]["input_ids"] for i in chunk]).to(self.device)
                values, indices, rest = teacher_top_k(teacher(ids).logits, self.kd.logit_cache.top_k,
                                                      self.kd.temperature)
                cache.store(chunk, values, indices, rest)
        finally:
            teacher.recorder = recorder
        trainer.strategy.barrier("logit_cache_filled")
        return len(todo)

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        kd, att = self.kd, self.kd.attention
        ids, labels = batch["input_ids"], batch["labels"]
        mask = batch.get("attention_mask")
        if self._student_states is not None:
            self._student_states.clear()
        logits = self(ids)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        use_logits, use_attention = kd.logit_weight > 0, kd.attention_weight > 0
        cached = self.cache is not None and use_logits
        teacher_out = None
        if (use_logits and not cached) or use_attention:
            teacher_out = self._require_teacher()(ids, logits=use_logits and not cached)
        zero = logits.new_zeros((), dtype=torch.float32)
        kl = zero
        if cached:
            values, indices, rest = self.cache.load(batch["index"], self.device)
            kl = logit_kl_top_k(logits, values, indices, rest, kd.temperature, mask, kd.tau_squared)
        elif use_logits:
            kl = logit_kl(logits, teacher_out.logits, kd.temperature, mask, kd.tau_squared)
        attn = zero
        if use_attention:
            attn = attention_relation_loss(self._student_states.states, teacher_out.states, self.pairs, att.states,
                                           att.relation_heads, att.relation, att.temperature, att.causal_mask,
                                           mask if att.padding_mask else None, att.reduction)
        loss = kd.ce_weight * ce + kd.logit_weight * kl + kd.attention_weight * attn
        self.tokens_seen += ids.numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ce", ce, prog_bar=True)
        self.log("train/logit_kl", kl, prog_bar=use_logits)
        self.log("train/attn_kl", attn, prog_bar=use_attention)
        self.log("train/tokens", float(self.tokens_seen))
        return loss
