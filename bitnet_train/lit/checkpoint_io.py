"""Atomic checkpoint writes: a killed run never leaves a half-written file under the final name.

The checkpoint is serialized to `NAME.tmp-PID` beside the target, flushed to disk, then renamed
over the target with os.replace (atomic on POSIX), so `last.ckpt` is always either the previous
complete checkpoint or the new complete one. Loading turns an unreadable file into a one-line
ConfigError that says which file and what to do.

Faults: a checkpoint whose weights hold NaN/inf is never written (NonFiniteTrainingError); a write
that runs out of disk space (checked before writing against the tensors' size, and on ENOSPC or
torch's "unexpected pos" while writing) removes its temporary file and raises a one-line
CheckpointSpaceError naming the folder and the space needed, the previous file untouched.
`remove_stale_temporaries` deletes the `NAME.tmp-PID` files of writers that no longer run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bitnet_train.config import ConfigError


_TEMP = re.compile(r"\.tmp-(\d+)$")
SPACE_MARGIN = 1.05
"""Free space required before a write, as a multiple of the tensors' bytes (pickle and zip overhead)."""


class NonFiniteTrainingError(RuntimeError):
    """Training gave up on non-finite losses, gradients or weights; the message names the step and last good checkpoint."""


class CheckpointSpaceError(OSError):
    """A checkpoint did not fit on its file system; the message names the folder and the space needed."""


def _tensors(obj: Any, prefix: str = ""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{i}")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages in a (nested) checkpoint, each storage counted once."""
    seen, total = set(), 0
    for _, t in _tensors(obj):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def first_non_finite(state: dict[str, Any]) -> str | None:
    """Name of the first floating tensor of a state dict holding NaN or inf, or None."""
    for name, t in _tensors(state):
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            return name
    return None


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _space_error(path: Path, needed: int) -> CheckpointSpaceError:
    free = shutil.disk_usage(path.parent).free
    return CheckpointSpaceError(
        errno.ENOSPC, f"no space left for checkpoint {path.name} in {path.parent}: it needs about {_mb(needed)}, "
        f"{_mb(free)} free; free space there or set callbacks.checkpoint.dirpath to a larger disk")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = int(tensor_bytes(obj) * SPACE_MARGIN)
    if shutil.disk_usage(path.parent).free < needed:
        raise _space_error(path, needed)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError ("unexpected pos ...")
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(err) \
            or "No space left" in str(err)
        if full:
            raise _space_error(path, needed) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete `*.tmp-PID` checkpoint files (and folders) in `folder` whose writer PID no longer runs; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _TEMP.search(path.name)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteTrainingError(
                f"refusing to write checkpoint {path}: weight {bad} is not finite (NaN/inf); earlier checkpoints in "
                f"{Path(path).parent} are kept; enable callbacks.faults (policy=stop or skip) and lower optim.lr")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return load_checkpoint_file(path, map_location if map_location is not None else "cpu")
