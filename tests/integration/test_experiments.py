"""Every shipped experiment composes, passes validation and instantiates (big models on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bitnet_train.config import DataConfig, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig, from_mapping, to_dict
from bitnet_train.lit.callbacks import StepPlanCallback, StepProgressBar
from bitnet_train.lit.loggers import build_loggers
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.paths import conf_dir
from bitnet_train.tasks.checks import check_schedule
from bitnet_train.tasks.pretrain import INIT_REQUIRED, resolve_init
from bitnet_train.tasks.trainer import build_trainer
from conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
DISTILL = [name for name in EXPERIMENTS if name.startswith("distill_")]


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
    trainer_cfg = cfg.trainer
    if trainer_cfg.accelerator == "gpu" and not torch.cuda.is_available():
        trainer_cfg.accelerator, trainer_cfg.devices, trainer_cfg.precision = "cpu", 1, "32-true"
    if cfg.get("strategy") is not None and not torch.cuda.is_available():
        cfg.strategy = None  # GPU strategies are built in tests/unit/parallel/test_strategies.py
    trainer = build_trainer(cfg, module.model, max_steps=cfg.trainer.max_steps, quant=quant, schedule=schedule).trainer
    plans = [c for c in trainer.callbacks if isinstance(c, StepPlanCallback)]
    expected = int(schedule.active) + int(bool(quant.activation_schemes_at))
    assert len(plans) == (1 if expected else 0) and (not plans or len(plans[0].plans) == expected)
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
    from bitnet_train.tasks.distill import read_settings
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
    assert any(isinstance(c, StepProgressBar) for c in trainer.callbacks)


@pytest.mark.parametrize("name", DISTILL)
def test_distill_experiment_without_teacher_says_so(name, tmp_path):
    from bitnet_train.config import ConfigError
    from bitnet_train.tasks.distill import read_settings

    cfg = compose_config([f"+experiment={name}", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"distill\.teacher is not set"):
        read_settings(cfg)
