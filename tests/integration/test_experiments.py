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
DISTILL = [name for name in EXPERIMENTS if name.startswith("distill_")]


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


@pytest.fixture(scope="module")
def distill_teacher(tmp_path_factory):
    """A tiny random Qwen2 with 6 layers and q/kv widths 128/64, so the shipped relation settings apply as they are."""
    from distill_helpers import make_teacher

    return make_teacher(tmp_path_factory.mktemp("teacher"), num_hidden_layers=6, hidden_size=128,
                        num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("name", DISTILL)
def test_distill_experiment_instantiates(name, tmp_path, distill_teacher):
    from bitnet_train.distill.runner import read_settings
    from bitnet_train.distill.student import student_model_config
    from bitnet_train.distill.teacher import load_teacher
    from bitnet_train.lit.callbacks import StageCallback
    from bitnet_train.lit.distill import DistillModule

    cfg = compose_config([f"+experiment={name}", f"out_dir={tmp_path}", f"distill.teacher={distill_teacher}"])
    assert cfg.data.tokenizer == str(distill_teacher) and cfg.quant.norm == cfg.distill.norms
    settings = read_settings(cfg)
    teacher = load_teacher(settings.distill)
    student = student_model_config(teacher, settings.distill, settings.model)
    module = DistillModule(to_dict(student), to_dict(settings.quant), to_dict(settings.optim3),
                           to_dict(settings.distill.stage3))
    module.attach_teacher(teacher)
    assert module.pairs == [(0, 0)] and len(module.quantized_names) == 7 * 6  # layer -6 of 6
    trainer_cfg = cfg.trainer
    if trainer_cfg.accelerator == "gpu" and not torch.cuda.is_available():
        trainer_cfg.accelerator, trainer_cfg.devices, trainer_cfg.precision = "cpu", 1, "32-true"
    callbacks = [instantiate(spec) for spec in cfg.callbacks.values() if spec is not None]
    callbacks.append(StageCallback(3, "distillation"))
    trainer = instantiate(trainer_cfg, logger=build_loggers(cfg.logger) or False, callbacks=callbacks)
    assert any(type(c).__name__ == "StageRichProgressBar" for c in trainer.callbacks)


@pytest.mark.parametrize("name", DISTILL)
def test_distill_experiment_without_teacher_says_so(name, tmp_path):
    from bitnet_train.config import ConfigError
    from bitnet_train.distill.runner import read_settings

    cfg = compose_config([f"+experiment={name}", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"distill\.teacher is not set"):
        read_settings(cfg)
