"""Every shipped experiment composes, passes validation and instantiates (big models on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bitnet_train.config import DataConfig, ModelConfig, OptimConfig, QuantConfig, from_mapping, to_dict
from bitnet_train.lit.loggers import build_loggers
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.paths import conf_dir
from conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert EXPERIMENTS, "no experiments shipped"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tmp_path):
    cfg = compose_config([f"+experiment={name}", f"out_dir={tmp_path}"])
    from_mapping(DataConfig, "data", cfg.data)
    model = from_mapping(ModelConfig, "model", cfg.model)
    model.vocab_size = model.vocab_size or 4096
    quant = from_mapping(QuantConfig, "quant", cfg.quant)
    optim = from_mapping(OptimConfig, "optim", cfg.optim)
    with torch.device("meta"):
        module = PretrainModule(to_dict(model), to_dict(quant), to_dict(optim))
    assert module.model.config.hidden_size == cfg.model.hidden_size
    assert len(module.quantized_names) == (7 * model.num_hidden_layers if quant.enabled else 0)

    trainer_cfg = cfg.trainer
    if trainer_cfg.accelerator == "gpu" and not torch.cuda.is_available():
        trainer_cfg.accelerator, trainer_cfg.devices, trainer_cfg.precision = "cpu", 1, "32-true"
    callbacks = [instantiate(spec) for spec in cfg.callbacks.values() if spec is not None]
    trainer = instantiate(trainer_cfg, logger=build_loggers(cfg.logger) or False, callbacks=callbacks)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert Path(cfg.out_dir) == tmp_path
