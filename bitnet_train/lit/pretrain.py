"""LightningModule for causal-LM pretraining of a BitNet b1.58 (or full-precision) decoder.

Builds the decoder from ModelConfig, swaps its linears for BitLinear per QuantConfig, and trains
next-token cross-entropy with AdamW: decay on matrices only (not on norms, biases, embeddings),
warmup then cosine / linear / constant / BitNet two-stage learning rate, and the two-stage
weight-decay switch (schedules/lr.py). Validation reports token-weighted loss and perplexity.
Checkpoints also carry tokens seen and the RNG states, so a resumed run continues exactly.
`init_state` (models/init_from.py) starts from existing weights: the plain decoder's weights are
loaded before the quantization swap, the input norms the source has after it (new ones stay at 1).
Multi-process: the logged training loss is the mean over ranks (the global batch's loss); under
FSDP2 `configure_model` shards the decoder (dist/fsdp2.py).
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import MeanMetric

from bitnet_train.config import ModelConfig, OptimConfig, QuantConfig, from_mapping, to_dict
from bitnet_train.models.decoder import CausalLM
from bitnet_train.models.init_from import load_base, load_norms
from bitnet_train.quant.convert import quantize_model
from bitnet_train.schedules.lr import lr_multiplier, weight_decay_at


class PretrainModule(L.LightningModule):
    """Next-token prediction on packed blocks {"input_ids", "labels"}."""

    def __init__(self, model: Mapping[str, Any], quant: Mapping[str, Any], optim: Mapping[str, Any],
                 compile: bool = False, init_state: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model_cfg = from_mapping(ModelConfig, "model", model)
        self.quant_cfg = from_mapping(QuantConfig, "quant", quant)
        self.optim_cfg = from_mapping(OptimConfig, "optim", optim)
        self.save_hyperparameters({"model": to_dict(self.model_cfg), "quant": to_dict(self.quant_cfg),
                                   "optim": to_dict(self.optim_cfg), "compile": compile})
        self.model = CausalLM(self.model_cfg)
        pending = load_base(self.model, dict(init_state)) if init_state is not None else {}
        self.quantized_names = quantize_model(self.model, self.quant_cfg)
        self.new_norms = load_norms(self.model, pending) if init_state is not None else []
        if compile:
            self.model.compile()  # in place: parameter names (and checkpoints) stay the same
        self.val_loss = MeanMetric()
        self.tokens_seen = 0

    def configure_model(self) -> None:
        """Shard the decoder with FSDP2 under FSDP2Strategy (the only strategy that builds a device mesh)."""
        if self.device_mesh is None:
            return
        from bitnet_train.parallel.fsdp2 import shard_decoder

        strategy = self.trainer.strategy
        shard_decoder(self.model, self.device_mesh["data_parallel"],
                      reshard_after_forward=getattr(strategy, "reshard_after_forward", True),
                      gather=getattr(strategy, "gather", "latent"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss
        self.log("train/tokens", float(self.tokens_seen))
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        n_tokens = (batch["labels"] != -100).sum()
        self.val_loss.update(loss.detach(), n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss), prog_bar=True, sync_dist=False)

    # ---- optimization -------------------------------------------------------------------------
    def _total_steps(self) -> int:
        total = self.trainer.max_steps if self.trainer is not None else -1
        if total is None or total < 0:
            total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("trainer.max_steps must be set: the learning-rate schedule needs the run length")
        return int(total)

    def configure_optimizers(self):
        decay, no_decay = [], []
        embeddings = {id(self.model.model.embed_tokens.weight), id(self.model.lm_head.weight)}
        for _, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
        cfg = self.optim_cfg
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        total = self._total_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total, cfg))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        wd = weight_decay_at(self.trainer.global_step, self._total_steps(), self.optim_cfg)
        for optimizer in self.trainer.optimizers:
            optimizer.param_groups[0]["weight_decay"] = wd

    # ---- checkpoint extras ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                    "python": random.getstate()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        states = checkpoint.get("rng_states")
        if states is not None:
            torch.set_rng_state(states["torch"])
            np.random.set_state(states["numpy"])
            random.setstate(states["python"])
