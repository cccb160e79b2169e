"""The training run, start to end: settings, data, model, quantization, trainer, fit, metrics.

Every user mistake that can be found before compute (settings, data files, tokenizer/model
vocabulary, checkpoint to resume) is found here first and raised as a one-line ConfigError.
Outputs go to `out_dir` (Hydra's run folder): checkpoints/last.ckpt, logs/, metrics.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bitnet_train.config import ConfigError, DataConfig, ModelConfig, OptimConfig, QuantConfig, from_mapping, to_dict
from bitnet_train.data import CausalLMDataModule
from bitnet_train.lit.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from bitnet_train.lit.loggers import build_loggers
from bitnet_train.lit.pretrain import PretrainModule

log = logging.getLogger(__name__)


def resolve_vocab(model: ModelConfig, tokenizer_vocab: int, tokenizer_name: str) -> ModelConfig:
    """Take the tokenizer's vocabulary size, or check a configured one can hold every token id."""
    if model.vocab_size is None:
        model.vocab_size = tokenizer_vocab
    elif model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={model.vocab_size} is smaller than the vocabulary of tokenizer {tokenizer_name} "
            f"({tokenizer_vocab}); set model.vocab_size=null (take the tokenizer's) or >= {tokenizer_vocab}")
    return model


def check_resume(ckpt_path: str, module: PretrainModule) -> None:
    """Fail early, in one line, if the checkpoint is unreadable or holds another model."""
    state = load_checkpoint_file(ckpt_path)["state_dict"]
    ours = module.state_dict()
    for key, tensor in ours.items():
        if key not in state:
            raise ConfigError(f"checkpoint {ckpt_path} lacks {key}: it was trained with another model/quant config")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"checkpoint {ckpt_path} has {key} of shape {tuple(state[key].shape)}, the configured model "
                f"{tuple(tensor.shape)}: use the model/quant/data settings the run was started with")


def write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def train(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("distill") is not None:  # BitDistill's three stages (+experiment=distill_*)
        from bitnet_train.distill.runner import run_distillation

        return run_distillation(cfg)
    out_dir = Path(cfg.out_dir)
    data_cfg = from_mapping(DataConfig, "data", cfg.data)
    model_cfg = from_mapping(ModelConfig, "model", cfg.model)
    quant_cfg = from_mapping(QuantConfig, "quant", cfg.quant)
    optim_cfg = from_mapping(OptimConfig, "optim", cfg.optim)
    if cfg.trainer.get("max_steps", -1) in (None, -1) and not cfg.trainer.get("fast_dev_run"):
        raise ConfigError("trainer.max_steps must be set (training is step-based): e.g. trainer.max_steps=400")

    L.seed_everything(cfg.seed, workers=True)
    datamodule = CausalLMDataModule(data_cfg)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    model_cfg = resolve_vocab(model_cfg, tokenizer.vocab_size, tokenizer.name)
    if data_cfg.seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len={data_cfg.seq_len} exceeds model.max_position_embeddings="
                          f"{model_cfg.max_position_embeddings}; shorten data.seq_len")

    module = PretrainModule(to_dict(model_cfg), to_dict(quant_cfg), to_dict(optim_cfg), compile=cfg.get("compile", False))
    if cfg.get("ckpt_path"):
        check_resume(cfg.ckpt_path, module)
    log.info("model: %.2fM parameters (%d linears quantized)", module.model.num_parameters() / 1e6,
             len(module.quantized_names))

    callbacks = [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.get("logger")) or False,
                                     callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - started
    train_loss = trainer.callback_metrics.get("train/loss")
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    val_loss = float(results[0]["val/loss"]) if results else float("nan")

    metrics = {
        "steps": int(trainer.global_step),
        "tokens_seen": int(module.tokens_seen),
        "train_loss": float(train_loss) if train_loss is not None else None,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss) if math.isfinite(val_loss) else None,
        "val_unigram_perplexity": datamodule.unigram_perplexity(),
        "train_seconds": round(train_seconds, 2),
        "parameters": module.model.num_parameters(),
        "quantized_linears": len(module.quantized_names),
        "data": datamodule.stats(),
        "resumed_from": cfg.get("ckpt_path"),
    }
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(metrics, out_dir / "metrics.json")
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
        log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if k != "data"}))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return metrics
