"""The training run, start to end: settings, data, model, quantization, trainer, fit, metrics.

Every user mistake that can be found before compute (settings, data files, tokenizer/model
vocabulary, checkpoint to resume, weights to start from, schedule) is found here first and raised
as a one-line ConfigError. `init_from` (models/init_from.py) starts from existing 16-bit weights
and takes the architecture from them; `schedule` (schedules/) adds the phase-in and transition
callbacks, and quant.activation_schemes_at the 8-bit-then-low-bit activation switch (a4.8, v2).
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
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from bitnet_train.config import (ConfigError, DataConfig, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig,
                                 from_mapping, to_dict)
from bitnet_train.data import CausalLMDataModule
from bitnet_train.lit.callbacks.activation_stage import build_activation_stage_callbacks
from bitnet_train.lit.callbacks.phase_in import build_schedule_callbacks
from bitnet_train.parallel.checkpoint import check_resumable, newest_resumable, remove_requeue_checkpoints
from bitnet_train.lit.callbacks import SlurmRequeue
from bitnet_train.lit.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from bitnet_train.lit.loggers import build_loggers
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.models.init_from import InitSource, read_init_source

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


def check_resume(ckpt_path: str, module: PretrainModule, strategy: Any = None) -> None:
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


INIT_REQUIRED = "REQUIRED"
"""An experiment that only makes sense from existing weights sets init_from to this; the user replaces it."""


def resolve_init(cfg: DictConfig) -> InitSource | None:
    """The `init_from` source, or None (init_from=REQUIRED, set by such experiments, is a ConfigError)."""
    if not cfg.get("init_from"):
        return None
    if str(cfg.init_from) == INIT_REQUIRED:
        raise ConfigError("this experiment starts from existing weights: set init_from=PATH (a bitnet_train .ckpt "
                          "trained with quant.enabled=false, or a transformers model folder)")
    return read_init_source(str(cfg.init_from))


def instantiate_checked(spec: Any) -> Any:
    """hydra.utils.instantiate, letting a ConfigError raised by the component through as itself (one line)."""
    try:
        return instantiate(spec)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


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
    schedule_cfg = from_mapping(ScheduleConfig, "schedule", cfg.get("schedule"))
    check_schedule(schedule_cfg, quant_cfg)
    init = resolve_init(cfg)
    if init is not None:
        model_cfg = init.model
        if data_cfg.tokenizer is None and init.tokenizer_dir is not None:
            data_cfg.tokenizer = init.tokenizer_dir
        log.info("init_from %s (%s): architecture and weights from it%s", init.path, init.kind,
                 "; its tokenizer is the run's" if init.tokenizer_dir and data_cfg.tokenizer == init.tokenizer_dir else "")
    if cfg.trainer.get("max_steps", -1) in (None, -1) and not cfg.trainer.get("fast_dev_run"):
        raise ConfigError("trainer.max_steps must be set (training is step-based): e.g. trainer.max_steps=400")

    strategy = {"strategy": instantiate_checked(cfg.strategy)} if cfg.get("strategy") else {}  # conf/strategy/

    L.seed_everything(cfg.seed, workers=True)
    datamodule = CausalLMDataModule(data_cfg)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    model_cfg = resolve_vocab(model_cfg, tokenizer.vocab_size, tokenizer.name)
    if data_cfg.seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len={data_cfg.seq_len} exceeds model.max_position_embeddings="
                          f"{model_cfg.max_position_embeddings}; shorten data.seq_len")

    resuming = bool(cfg.get("ckpt_path"))
    module = PretrainModule(to_dict(model_cfg), to_dict(quant_cfg), to_dict(optim_cfg), compile=cfg.get("compile", False),
                            init_state=init.state if init is not None and not resuming else None)
    num_parameters = module.model.num_parameters()  # before any sharding strategy partitions them
    log.info("model: %.2fM parameters (%d linears quantized)", num_parameters / 1e6, len(module.quantized_names))

    callbacks = [instantiate_checked(spec) for spec in (cfg.get("callbacks") or {}).values() if spec is not None]
    max_steps = cfg.trainer.get("max_steps", -1)
    total = max_steps if max_steps and max_steps > 0 else 1
    callbacks += build_schedule_callbacks(schedule_cfg, module.model, total)
    callbacks += build_activation_stage_callbacks(quant_cfg, module.model, total)  # a4.8 / v2: 8-bit first
    requeue = next((c for c in callbacks if isinstance(c, SlurmRequeue)), None)
    plugins: list[Any] = [AtomicCheckpointIO()]
    if requeue is not None and requeue.active():  # it replaces Lightning's SIGUSR1 handler (see its docstring)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    loggers = build_loggers(cfg.get("logger"))
    for logger in loggers:  # beside the module's hyperparameters: for grouping runs in dashboards
        logger.log_hyperparams({"schedule": to_dict(schedule_cfg), "init_from": init.path if init else None})
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False,
                                     callbacks=callbacks, plugins=plugins, **strategy)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "auto":  # requeued jobs: continue from this run folder's newest checkpoint, if any
        ckpt_path = newest_resumable(out_dir)
        log.info("ckpt_path=auto: %s", ckpt_path or "no checkpoint in the run folder yet, starting fresh")
    if ckpt_path:
        check_resume(ckpt_path, module, trainer.strategy)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - started
    if requeue is not None and requeue.requeued:  # preempted: the job restarts from its checkpoint
        log.info("requeued at step %d; the restarted job continues from its checkpoint", trainer.global_step)
        _end_distributed()
        return {"steps": int(trainer.global_step), "requeued": True}
    remove_requeue_checkpoints(trainer)  # else a Slurm job would validate the requeue checkpoint's weights
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
        "parameters": num_parameters,
        "quantized_linears": len(module.quantized_names),
        "data": datamodule.stats(),
        "resumed_from": ckpt_path,
        "init_from": init.path if init is not None else None,
        "schedule": to_dict(schedule_cfg) if schedule_cfg.active else None,
    }
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(metrics, out_dir / "metrics.json")
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
        log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if k != "data"}))
    _end_distributed()
    return metrics


def _end_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
