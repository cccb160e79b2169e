"""The pretraining task (`task: pretrain`): settings, data, model, quantization, trainer, fit, metrics.

Every user mistake that can be found before compute (settings, data files, tokenizer/model
vocabulary, checkpoint to resume, weights to start from, schedule) is found here first and raised
as a one-line ConfigError. `init_from` (models/init_from.py) starts from existing 16-bit weights
and takes the architecture from them; `schedule` (schedules/) and quant.activation_schemes_at add the
step plans (tasks/trainer.py). Outputs go to `out_dir` (Hydra's run folder): checkpoints/last.ckpt,
logs/, metrics.json.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from bitnet_train.config import (ConfigError, DataConfig, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig,
                                 from_mapping, to_dict)
from bitnet_train.data import CausalLMDataModule
from bitnet_train.evaluate.callback import evaluation_metrics
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.tasks.init_source import InitSource, read_init_source
from bitnet_train.lit.run_checkpoints import newest_resumable
from bitnet_train.tasks.checks import check_max_steps, check_resume, check_schedule, check_seq_len, resolve_vocab
from bitnet_train.tasks.trainer import build_strategy, build_trainer, finish_run, fit

log = logging.getLogger(__name__)

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


def run_pretraining(cfg: DictConfig) -> dict[str, Any]:
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
    check_max_steps(cfg.trainer)
    strategy = build_strategy(cfg.strategy) if cfg.get("strategy") else None  # its errors before data preparation

    L.seed_everything(cfg.seed, workers=True)
    datamodule = CausalLMDataModule(data_cfg)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    model_cfg = resolve_vocab(model_cfg, tokenizer.vocab_size, tokenizer.name)
    check_seq_len(data_cfg.seq_len, model_cfg)

    resuming = bool(cfg.get("ckpt_path"))
    module = PretrainModule(to_dict(model_cfg), to_dict(quant_cfg), to_dict(optim_cfg), compile=cfg.get("compile", False),
                            init_state=init.state if init is not None and not resuming else None)
    num_parameters = module.model.num_parameters()  # before any sharding strategy partitions them
    log.info("model: %.2fM parameters (%d linears quantized)", num_parameters / 1e6, len(module.quantized_names))

    max_steps = cfg.trainer.get("max_steps", -1)
    run = build_trainer(cfg, module.model, max_steps=max_steps if max_steps and max_steps > 0 else 1,
                        quant=quant_cfg, schedule=schedule_cfg,
                        hyperparams={"schedule": to_dict(schedule_cfg), "init_from": init.path if init else None},
                        strategy=strategy)
    trainer = run.trainer
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "auto":  # requeued jobs: continue from this run folder's newest checkpoint, if any
        ckpt_path = newest_resumable(out_dir)
        log.info("ckpt_path=auto: %s", ckpt_path or "no checkpoint in the run folder yet, starting fresh")
    if ckpt_path:
        check_resume(ckpt_path, module, trainer.strategy)
    train_seconds = fit(run, module, datamodule, ckpt_path)
    if run.requeued:
        finish_run(cfg, None)
        return {"steps": int(trainer.global_step), "requeued": True}
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
        **evaluation_metrics(trainer.callbacks),  # callbacks.evaluation: the last tasks / perplexity figures
    }
    return finish_run(cfg, metrics)
