"""Build the configured experiment loggers (csv, tensorboard, wandb) from the `logger` config group.

Weights & Biases runs offline, with no key and no network, when no credentials are found
(WANDB_API_KEY or a netrc entry) and the user has not chosen WANDB_MODE; its files then sit in
`<out_dir>/wandb/offline-run-*` and can be synced later with `wandb sync`.
"""

from __future__ import annotations

import netrc
import os
from typing import Any, Mapping

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def build_loggers(section: Mapping[str, Any] | None) -> list[Logger]:
    loggers: list[Logger] = []
    for name, spec in (section or {}).items():
        if spec is None:
            continue
        kwargs: dict[str, Any] = {}
        if "WandbLogger" in str(spec.get("_target_", "")) and "WANDB_MODE" not in os.environ \
                and not wandb_has_credentials():
            kwargs["offline"] = True
        loggers.append(instantiate(spec, **kwargs))
    return loggers
