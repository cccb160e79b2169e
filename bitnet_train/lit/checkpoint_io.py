"""Atomic checkpoint writes: a killed run never leaves a half-written file under the final name.

The checkpoint is serialized to `NAME.tmp-PID` beside the target, flushed to disk, then renamed
over the target with os.replace (atomic on POSIX), so `last.ckpt` is always either the previous
complete checkpoint or the new complete one. Loading turns an unreadable file into a one-line
ConfigError that says which file and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bitnet_train.config import ConfigError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load a Lightning checkpoint, or raise ConfigError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass ckpt_path=PATH of a .ckpt file (or ckpt_path=null)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, wrong format, pickle errors
        raise ConfigError(
            f"checkpoint {path} is corrupted or not a checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "resume from another file in the checkpoints folder") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint {path} holds no 'state_dict'; it is not a bitnet_train Lightning checkpoint")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return load_checkpoint_file(path, map_location if map_location is not None else "cpu")
