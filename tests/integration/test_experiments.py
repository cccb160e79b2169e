"""Every shipped experiment composes, passes validation and instantiates (big models on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bitnet_train.config import DataConfig, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig, from_mapping, to_dict
from bitnet_train.lit.callbacks.activation_stage import build_activation_stage_callbacks
from bitnet_train.lit.callbacks.phase_in import build_schedule_callbacks
from bitnet_train.lit.loggers import build_loggers
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.paths import conf_dir
from bitnet_train.run import INIT_REQUIRED, check_schedule, resolve_init
from conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert EXPERIMENTS, "no experiments shipped"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tmp_path, tiny_hf_llama):
    cfg = compose_config([f"+experiment={name}", f"out_dir={tmp_path}"])
    from_mapping(DataConfig, "data", cfg.data)
    model = from_mapping(ModelConfig, "model", cfg.model)
    model.vocab_size = model.vocab_size or 4096
    quant = from_mapping(QuantConfig, "quant", cfg.quant)
    optim = from_mapping(OptimConfig, "optim", cfg.optim)
    schedule = from_mapping(ScheduleConfig, "schedule", cfg.schedule)
    check_schedule(schedule, quant)
    if cfg.init_from == INIT_REQUIRED:  # experiments that continue existing weights: give them a small model
        cfg.init_from = str(tiny_hf_llama)
    init = resolve_init(cfg)
    if init is not None:
        module = PretrainModule(to_dict(init.model), to_dict(quant), to_dict(optim), init_state=init.state)
        model = init.model
    else:
        with torch.device("meta"):
            module = PretrainModule(to_dict(model), to_dict(quant), to_dict(optim))
        assert module.model.config.hidden_size == cfg.model.hidden_size
    assert len(module.quantized_names) == (7 * model.num_hidden_layers if quant.enabled else 0)
    schedule_callbacks = build_schedule_callbacks(schedule, module.model, cfg.trainer.max_steps)
    assert len(schedule_callbacks) == (2 if schedule.active else 0)
    schedule_callbacks += build_activation_stage_callbacks(quant, module.model, cfg.trainer.max_steps)
    assert len(schedule_callbacks) == (2 if schedule.active else 0) + (2 if quant.activation_schemes_at else 0)

    trainer_cfg = cfg.trainer
    if trainer_cfg.accelerator == "gpu" and not torch.cuda.is_available():
        trainer_cfg.accelerator, trainer_cfg.devices, trainer_cfg.precision = "cpu", 1, "32-true"
    callbacks = [instantiate(spec) for spec in cfg.callbacks.values() if spec is not None] + schedule_callbacks
    trainer = instantiate(trainer_cfg, logger=build_loggers(cfg.logger) or False, callbacks=callbacks)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert Path(cfg.out_dir) == tmp_path
