"""The one trainer builder and the one end-of-run step, used by pretraining and by every distillation stage.

`build_trainer(cfg, module, ...)` turns the run config into a Lightning Trainer: the `callbacks` group,
the run's step plans (`schedule=` phase-in, quant.activation_schemes_at), the task's own callbacks, the
`logger` group, the `strategy` group, atomic checkpoint writes and, inside a Slurm job, our requeue
handling in place of Lightning's (SLURMEnvironment(auto_requeue=False); lit/callbacks/slurm_requeue.py).
A trainer option is therefore added in one place: the `trainer` group (conf/trainer/), or here.
`fit(...)` runs Trainer.fit and reports whether Slurm preempted it; `finish_run(...)` writes metrics.json
and the resolved config on rank 0 and ends the process group.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from bitnet_train.config import ConfigError, QuantConfig, ScheduleConfig
from bitnet_train.lit.callbacks.slurm_requeue import SlurmRequeue
from bitnet_train.lit.callbacks.step_plan import build_step_plan_callbacks
from bitnet_train.lit.checkpoint_io import AtomicCheckpointIO
from bitnet_train.lit.console import clean_console
from bitnet_train.lit.loggers import build_loggers
from bitnet_train.lit.run_checkpoints import remove_requeue_checkpoints
from bitnet_train.strict_json import strict_json

log = logging.getLogger(__name__)


def instantiate_checked(spec: Any) -> Any:
    """hydra.utils.instantiate, letting a ConfigError raised by the component through as itself (one line)."""
    try:
        return instantiate(spec)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def build_strategy(spec: Any) -> Any:
    """The `strategy` group (conf/strategy/) as a Lightning strategy; its setting errors as one-line ConfigErrors."""
    return instantiate_checked(spec)


@dataclass
class RunTrainer:
    """A built trainer and the callback that knows whether Slurm preempted the fit."""

    trainer: L.Trainer
    requeue: SlurmRequeue | None

    @property
    def requeued(self) -> bool:
        return self.requeue is not None and self.requeue.requeued


def build_trainer(cfg: DictConfig, model: torch.nn.Module, *, max_steps: int, quant: QuantConfig | None = None,
                  schedule: ScheduleConfig | None = None, callbacks: list[L.Callback] | None = None,
                  hyperparams: dict[str, Any] | None = None, strategy: Any = None) -> RunTrainer:
    """The Trainer of `cfg` (its trainer, callbacks, logger and strategy groups) for `max_steps` optimizer steps.

    `quant` / `schedule` give the step plans applied to `model`'s BitLinears (None: none of that kind);
    `callbacks` are the task's own; `hyperparams` are logged beside the module's to every logger;
    `strategy` is one already built from the `strategy` group (None: built here).
    """
    clean_console()
    built = [instantiate_checked(spec) for spec in (cfg.get("callbacks") or {}).values() if spec is not None]
    if not cfg.trainer.get("enable_model_summary", True):
        built = [c for c in built if not isinstance(c, ModelSummary)]
    built += build_step_plan_callbacks(schedule, quant, model, max_steps)
    built += list(callbacks or [])
    requeue = next((c for c in built if isinstance(c, SlurmRequeue)), None)
    plugins: list[Any] = [AtomicCheckpointIO()]
    if requeue is not None and requeue.active():  # it replaces Lightning's SIGUSR1 handler (see its docstring)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    if strategy is None and cfg.get("strategy"):
        strategy = build_strategy(cfg.strategy)
    loggers = build_loggers(cfg.get("logger"))
    for logger in loggers:
        if hyperparams:
            logger.log_hyperparams(hyperparams)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=built, plugins=plugins,
                                     **({"strategy": strategy} if strategy is not None else {}))
    return RunTrainer(trainer, requeue)


def fit(run: RunTrainer, module: L.LightningModule, datamodule: L.LightningDataModule,
        ckpt_path: str | None) -> float:
    """Trainer.fit; the seconds it took. After a finished (not preempted) fit the requeue checkpoints go."""
    started = time.perf_counter()
    run.trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - started
    if run.requeued:  # preempted: the job restarts from its checkpoint
        log.info("requeued at step %d; the restarted job continues from its checkpoint", run.trainer.global_step)
    else:
        remove_requeue_checkpoints(run.trainer)  # else later validation would load the requeue checkpoint's weights
    return seconds


def is_global_zero() -> bool:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return not distributed or torch.distributed.get_rank() == 0


def write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def finish_run(cfg: DictConfig, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """metrics.json and config_resolved.yaml in the run folder (rank 0), then the process group ends.

    `metrics=None` (a preempted run) writes nothing: the requeued job finishes the run.
    """
    if metrics is not None and is_global_zero():
        out_dir = Path(cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(metrics, out_dir / "metrics.json")
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
        log.info("metrics: %s", json.dumps(strict_json({k: v for k, v in metrics.items() if k != "data"})))
    end_distributed()
    return metrics


def end_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
