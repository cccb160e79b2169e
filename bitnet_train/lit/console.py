"""A clean run console: each log line once, in Hydra's format, and no third-party advertising.

Lightning gives its loggers their own stream handler when it is imported before logging is configured,
so under Hydra every Lightning line appeared twice (plain, then in Hydra's format). `clean_console()`
removes those handlers and lets the records reach Hydra's root handler once; it drops Lightning's
"Tip:" lines (suggestions to install other products) and a deprecation notice from inside Lightning.
The run's entry point (bitnet_train.run) calls it before anything logs.
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


NOISE = ("Tip:", "Trainer already configured with model summary callbacks")
"""Lightning lines that say nothing about the run: product suggestions, and its note that our model table
(lit/callbacks/model_summary.py) replaces its own."""


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(noise in message for noise in NOISE)


_TIPS = _DropTips()


def clean_console() -> None:
    """Idempotent; call once a run starts (after Hydra configured logging)."""
    root_has_handlers = logging.getLogger().hasHandlers() and bool(logging.getLogger().handlers)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root_has_handlers:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
        for handler in [*logger.handlers, *logging.getLogger().handlers]:
            if _TIPS not in handler.filters:
                handler.addFilter(_TIPS)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
