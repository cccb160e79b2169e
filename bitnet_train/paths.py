"""Where the shipped configuration tree and default corpus live, in a checkout or an installed wheel."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def conf_dir() -> Path:
    """The Hydra config tree (the repository's conf/, shipped as the package bitnet_train.conf)."""
    return Path(str(importlib.resources.files("bitnet_train.conf")))


def shipped_dir() -> Path:
    """The repository's data/ folder (shipped as bitnet_train.shipped): default corpus and tokenizer."""
    return Path(str(importlib.resources.files("bitnet_train.shipped")))
