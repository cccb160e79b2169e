"""DeepSpeed ZeRO stage 2 (sharded optimizer states and gradients) and stage 3 (parameters too).

`deepspeed_strategy(...)` is what `conf/strategy/deepspeed_zero{2,3}.yaml` instantiate: Lightning's
DeepSpeedStrategy on GPUs, and on CPU processes (gloo) `CPUDeepSpeedStrategy`, a subclass that
exists only so the same ZeRO code paths can be tested without GPUs.

Under ZeRO-3 DeepSpeed gathers a module's parameters in a pre-forward hook and frees them after,
so BitLinear's forward sees the whole weight and gamma = mean|W| is exact (docs/METHODS.md#distributed-sharding).
Gradient clipping: DeepSpeed 0.19 clips at 1.0 unless told otherwise; Lightning writes the
trainer's `gradient_clip_val` into the DeepSpeed config, so every strategy clips the same.
Optimizer offload keeps our torch AdamW (`zero_force_ds_cpu_optimizer: false`): the same update as
every other strategy, without DeepSpeed's compiled CPU Adam.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DeepSpeedStrategy

from bitnet_train.config import ConfigError

log = logging.getLogger(__name__)


def deepspeed_strategy(stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False,
                       param_persistence_threshold: int | None = None, accelerator: str = "auto",
                       **kwargs: Any) -> DeepSpeedStrategy:
    """A ZeRO strategy for `accelerator` ('auto', 'gpu'/'cuda' or 'cpu'); other kwargs go to DeepSpeedStrategy.

    param_persistence_threshold (ZeRO-3): parameters with fewer elements stay whole on every rank
    (DeepSpeed's `stage3_param_persistence_threshold`, default 1e5); 0 shards every parameter.
    """
    if stage not in (2, 3):
        raise ConfigError(f"strategy.stage={stage!r} is not allowed; choose 2 (optimizer states and gradients "
                          "sharded) or 3 (parameters too)")
    if offload_parameters and stage != 3:
        raise ConfigError("strategy.offload_parameters=true needs ZeRO stage 3; use strategy=deepspeed_zero3 "
                          "or strategy.offload_parameters=false")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("strategy=deepspeed_zero* needs DeepSpeed: pip install 'bitnet_train[distributed]'") from None
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    cls = CPUDeepSpeedStrategy if on_cpu else DeepSpeedStrategy
    strategy = cls(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters, **kwargs)
    if offload_optimizer or offload_parameters:
        strategy.config["zero_force_ds_cpu_optimizer"] = False
    if param_persistence_threshold is not None:
        if stage != 3 or param_persistence_threshold < 0:
            raise ConfigError(f"strategy.param_persistence_threshold={param_persistence_threshold!r} needs ZeRO stage 3 "
                              "and a count >= 0")
        strategy.config["zero_optimization"]["stage3_param_persistence_threshold"] = int(param_persistence_threshold)
    return strategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy on CPU processes over gloo, for testing only.

    Lightning's DeepSpeedStrategy refuses any accelerator but CUDA, and checks that device indices
    match local ranks (CPU devices have none: `root_device` gives them the local rank). DeepSpeed itself runs ZeRO-2/3 on CPU; these
    overrides skip those two checks, and skip DeepSpeed's just-in-time build of its optional
    shared-memory all-reduce op (a C++ compile of a minute or two) when it was not prebuilt:
    gloo does the communication instead. Nothing else differs from the parent.
    """

    @property
    def root_device(self) -> torch.device:
        # DeepSpeed reads the device index as the process's local rank; a bare CPU device has none.
        return torch.device("cpu", self.local_rank)

    def setup_environment(self) -> None:
        # DeepSpeedStrategy.setup_environment = CUDA check + DDPStrategy.setup_environment
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        _skip_shm_op_build()
        self._init_deepspeed_distributed()


def _skip_shm_op_build() -> None:
    """Keep DeepSpeed's prebuilt shared-memory comm op if installed; never JIT-compile it."""
    from deepspeed.git_version_info import installed_ops

    # importlib, not `import deepspeed.comm.torch as ...`: the package attribute `deepspeed.comm.torch`
    # is the torch module itself, the submodule lives only in sys.modules.
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    if not installed_ops.get("deepspeed_shm_comm", False):
        ds_torch.build_shm_op = lambda: None
