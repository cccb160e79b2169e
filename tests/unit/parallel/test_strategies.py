"""Each conf/strategy/ option composes and builds a Lightning Trainer for 2 CPU processes; bad settings fail early."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from bitnet_train.config import ConfigError
from bitnet_train.lit.run_checkpoints import strategy_kind
from bitnet_train.parallel.fsdp2 import FSDP2Strategy
from bitnet_train.paths import conf_dir
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.tasks.trainer import build_strategy

STRATEGIES = sorted(p.stem for p in (conf_dir() / "strategy").glob("*.yaml"))


def _trainer(name: str, *overrides: str):
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"strategy={name}", "trainer.accelerator=cpu", "trainer.devices=2",
                                           "logger=none", "out_dir=.", *overrides])
    return instantiate(cfg.trainer, strategy=instantiate(cfg.strategy), logger=False, callbacks=[])


def test_the_four_strategies_ship():
    assert STRATEGIES == ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp2"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_builds_a_two_process_cpu_trainer(name):
    if name.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    trainer = _trainer(name)
    strategy = trainer.strategy
    assert trainer.world_size == 2 and strategy.root_device.type == "cpu"
    expected = {"ddp": DDPStrategy, "fsdp2": FSDP2Strategy, "deepspeed_zero2": DeepSpeedStrategy,
                "deepspeed_zero3": DeepSpeedStrategy}[name]
    assert isinstance(strategy, expected)
    assert strategy_kind(strategy) == {"ddp": "file", "fsdp2": "fsdp2"}.get(name, "deepspeed")
    if name.startswith("deepspeed"):
        assert type(strategy).__name__ == "CPUDeepSpeedStrategy"  # the CPU-only subclass, on CPU only
        assert strategy.config["zero_optimization"]["stage"] == int(name[-1])


def test_deepspeed_offload_keeps_our_optimizer():
    pytest.importorskip("deepspeed")
    strategy = _trainer("deepspeed_zero3", "strategy.offload_optimizer=true", "strategy.offload_parameters=true",
                        "strategy.param_persistence_threshold=0").strategy
    zero = strategy.config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_param_persistence_threshold"] == 0
    assert strategy.config["zero_force_ds_cpu_optimizer"] is False


@pytest.mark.parametrize("overrides, message", [
    (["strategy.stage=1"], "strategy.stage=1 is not allowed"),
    (["+strategy.offload_parameters=true"], "offload_parameters=true needs ZeRO stage 3"),
    (["+strategy.param_persistence_threshold=0"], "param_persistence_threshold=0 needs ZeRO stage 3"),
])
def test_bad_deepspeed_settings_fail_in_one_line(overrides, message):
    pytest.importorskip("deepspeed")
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        cfg = compose("config", overrides=["strategy=deepspeed_zero2", "trainer.accelerator=cpu", *overrides])
    with pytest.raises(ConfigError) as err:
        build_strategy(cfg.strategy)  # what the trainer builder calls: the ConfigError itself, not Hydra's wrapper
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fsdp2_refuses_single_file_checkpoints():
    with pytest.raises(ConfigError, match="writes sharded checkpoint folders"):
        FSDP2Strategy(save_distributed_checkpoint=False)


def test_bitlinear_refuses_a_partitioned_weight():
    layer = BitLinear(8, 4)
    layer.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside forward
    with pytest.raises(RuntimeError, match=r"sees a weight of shape \(0,\)"):
        layer.quantized_weight()


def test_sbatch_and_launcher_files_exist():
    repo = Path(__file__).resolve().parents[3]
    for path in ("launch/slurm/single_node.sbatch", "launch/slurm/multi_node.sbatch", "launch/hydra/launcher/slurm.yaml"):
        assert (repo / path).is_file(), path
