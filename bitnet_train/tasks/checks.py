"""Checks every task makes before compute: vocabulary, sequence length, schedule, checkpoint to resume."""

from __future__ import annotations

from typing import Any

import lightning as L

from bitnet_train.config import ConfigError, ModelConfig, QuantConfig, ScheduleConfig
from bitnet_train.lit.checkpoint_io import load_checkpoint_file
from bitnet_train.lit.run_checkpoints import check_resumable


def resolve_vocab(model: ModelConfig, tokenizer_vocab: int, tokenizer_name: str) -> ModelConfig:
    """Take the tokenizer's vocabulary size, or check a configured one can hold every token id."""
    if model.vocab_size is None:
        model.vocab_size = tokenizer_vocab
    elif model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={model.vocab_size} is smaller than the vocabulary of tokenizer {tokenizer_name} "
            f"({tokenizer_vocab}); set model.vocab_size=null (take the tokenizer's) or >= {tokenizer_vocab}")
    return model


def check_seq_len(seq_len: int, model: ModelConfig, whose: str = "model") -> None:
    if seq_len > model.max_position_embeddings:
        raise ConfigError(f"data.seq_len={seq_len} exceeds the {whose}'s max_position_embeddings="
                          f"{model.max_position_embeddings}; shorten data.seq_len")


def check_resume(ckpt_path: str, module: L.LightningModule, strategy: Any = None) -> None:
    """Fail early, in one line, if the checkpoint is unreadable, holds another model or needs another strategy.

    "last" and "hpc" are Lightning's own names (the newest last.ckpt, Slurm's requeue checkpoint).
    Sharded folders (FSDP2, DeepSpeed) are checked for kind here and for content when loaded.
    """
    if ckpt_path in ("last", "hpc"):
        return
    if check_resumable(ckpt_path, strategy) != "file":
        return
    state = load_checkpoint_file(ckpt_path)["state_dict"]
    ours = module.state_dict()
    for key, tensor in ours.items():
        if key not in state:
            raise ConfigError(f"checkpoint {ckpt_path} lacks {key}: it was trained with another model/quant config")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"checkpoint {ckpt_path} has {key} of shape {tuple(state[key].shape)}, the configured model "
                f"{tuple(tensor.shape)}: use the model/quant/data settings the run was started with")


def check_schedule(schedule: ScheduleConfig, quant: QuantConfig) -> None:
    """A schedule drives the lambdas of quantized linears: it needs quantization, and owns the lambdas."""
    if not schedule.active:
        return
    if not quant.enabled:
        raise ConfigError("a quantization schedule is set but quant.enabled=false; set quant.enabled=true "
                          "(the schedule keeps the model in 16-bit until schedule.at) or schedule=none")
    if quant.weight_lambda != 1.0 or quant.activation_lambda != 1.0:
        raise ConfigError(f"quant.weight_lambda={quant.weight_lambda} / quant.activation_lambda={quant.activation_lambda} "
                          "are fixed strengths, but the schedule sets the lambdas; leave them at 1 with a schedule")


def check_max_steps(trainer_cfg: Any) -> None:
    if trainer_cfg.get("max_steps", -1) in (None, -1) and not trainer_cfg.get("fast_dev_run"):
        raise ConfigError("trainer.max_steps must be set (training is step-based): e.g. trainer.max_steps=400")
