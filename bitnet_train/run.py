"""A run, start to end: the config's `task` picks its runner from TASKS.

  pretrain  tasks/pretrain.py  next-token training of a (ternary) decoder: `python -m bitnet_train`
  distill   tasks/distill.py   BitDistill's three stages from a teacher: `+experiment=distill_qwen`

Both build their trainers and finish their runs through tasks/trainer.py, so every trainer, callback,
logger, strategy, Slurm and schedule setting behaves the same in each.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from omegaconf import DictConfig

from bitnet_train.config import ConfigError
from bitnet_train.lit.console import clean_console
from bitnet_train.tasks.distill import run_distillation
from bitnet_train.tasks.pretrain import run_pretraining
from bitnet_train.tasks.trainer_settings import check_trainer_settings

TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "pretrain": run_pretraining,
    "distill": run_distillation,
}


def train(cfg: DictConfig) -> dict[str, Any]:
    clean_console()
    task = cfg.get("task", "pretrain")
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"task={task!r} is not a task{hint}; choose one of {', '.join(TASKS)}")
    if task == "pretrain" and cfg.get("distill") is not None:
        raise ConfigError("the distill group is set but task=pretrain; set task=distill (the distill_* experiments "
                          "do) or drop the distill group")
    check_trainer_settings(cfg.trainer)  # Lightning's own group, checked like ours before any compute
    return TASKS[task](cfg)
