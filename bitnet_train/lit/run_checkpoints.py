"""What kind of checkpoint a path holds, which strategy resumes it, and one consolidated file from any.

Kinds: `file` (one Lightning .ckpt: single process and DDP), `fsdp2` (a folder of
torch.distributed.checkpoint shards plus Lightning's `meta.pt`), `deepspeed` (a DeepSpeed folder with
`latest` and `checkpoint/` holding per-rank model and optimizer shards). Each resumes under the
strategy that wrote it. `consolidate` turns any of them into one Lightning checkpoint: the full
fp32 `state_dict` under PretrainModule's parameter names (tied weights under both names) and its
`hyper_parameters`, which `PretrainModule.load_from_checkpoint`, export and evaluation read. It
holds no optimizer state: resume from the strategy's own checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning
import torch

from bitnet_train.config import ConfigError
from bitnet_train.lit.checkpoint_io import atomic_torch_save, load_checkpoint_file, remove_stale_temporaries

KEPT_KEYS = ("hyper_parameters", "pytorch-lightning_version", "global_step", "epoch", "tokens_seen")
"""Entries of the source checkpoint that the consolidated one keeps besides the weights."""


def checkpoint_kind(path: str | os.PathLike) -> str:
    """'file', 'fsdp2' or 'deepspeed'; a ConfigError for anything else."""
    path = Path(path)
    if path.is_file():
        return "file"
    if path.is_dir():
        if (path / ".metadata").is_file():
            return "fsdp2"
        if (path / "latest").is_file() or (path / "checkpoint").is_dir():
            return "deepspeed"
        raise ConfigError(f"checkpoint folder {path} is neither an FSDP2 (torch.distributed.checkpoint) nor a "
                          "DeepSpeed checkpoint; pass a .ckpt file or a checkpoint folder written by training")
    raise ConfigError(f"checkpoint {path} does not exist; pass ckpt_path=PATH of a checkpoint (or ckpt_path=null)")


def strategy_kind(strategy: Any) -> str:
    """The checkpoint kind a Lightning strategy writes and reads."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy

    if isinstance(strategy, DeepSpeedStrategy):
        return "deepspeed"
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    return "file"


STRATEGY_FOR_KIND = {"file": "a single process or strategy=ddp",
                     "fsdp2": "strategy=fsdp2", "deepspeed": "strategy=deepspeed_zero2 or deepspeed_zero3"}


def deepspeed_stage(path: str | os.PathLike) -> int:
    """ZeRO stage of a DeepSpeed checkpoint folder, from its file names (stage 3 shards the model states too)."""
    path = Path(path)
    tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else "checkpoint"
    return 3 if any((path / tag).glob("zero_pp_rank_*_model_states.pt")) else 2


def check_resumable(path: str | os.PathLike, strategy: Any) -> str:
    """Fail in one line if `strategy` cannot resume the checkpoint at `path`; return its kind."""
    kind, wanted = checkpoint_kind(path), strategy_kind(strategy)
    fix = f"Resume with that strategy, or start a new run from its weights: python -m bitnet_train.consolidate {path}"
    if kind != wanted:
        raise ConfigError(f"checkpoint {path} is a {kind} checkpoint, which resumes only under "
                          f"{STRATEGY_FOR_KIND[kind]}; this run's strategy writes {wanted} checkpoints. {fix}")
    if kind == "deepspeed":
        stage, ours = deepspeed_stage(path), 3 if strategy.zero_stage_3 else 2
        if stage != ours:
            raise ConfigError(f"checkpoint {path} was written by DeepSpeed ZeRO stage {stage}, this run uses stage "
                              f"{ours}: use strategy=deepspeed_zero{stage}. {fix}")
    return kind


def newest_resumable(out_dir: str | os.PathLike) -> str | None:
    """`ckpt_path=auto`: the newest of this run folder's checkpoints, or None for a fresh start.

    Candidates are Lightning's Slurm requeue checkpoints (`hpc_ckpt_N.ckpt`, written on SIGUSR1
    before a preemption or the time limit) and `checkpoints/*.ckpt` (last.ckpt and the step
    checkpoints); a file or a sharded folder. Only complete files carry those names (writes go to
    `NAME.tmp-PID` first); the temporary files of killed writers are removed here.
    A job that Slurm or submitit requeues runs the same command again and continues from here.
    """
    out_dir = Path(out_dir)
    for folder in (out_dir, out_dir / "checkpoints"):  # writes cut short by killed runs
        remove_stale_temporaries(folder)
    candidates = [p for p in [*out_dir.glob("hpc_ckpt_*.ckpt"), *(out_dir / "checkpoints").glob("*.ckpt")]
                  if p.exists()]
    if not candidates:
        return None
    return str(max(candidates, key=_written_at))


def remove_requeue_checkpoints(trainer: Any) -> None:
    """After a finished fit, delete Lightning's Slurm requeue checkpoints (`hpc_ckpt_N.ckpt`) in the run folder.

    They only carry a preempted job over its restart. Left in place, Lightning would load them
    instead of the trained weights in every later `validate`/`test` call of a Slurm job.
    """
    from lightning.pytorch.trainer.states import TrainerStatus

    if trainer.state.status != TrainerStatus.FINISHED:
        return
    if trainer.is_global_zero:
        for path in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    trainer.strategy.barrier("remove_requeue_checkpoints")


def _written_at(path: Path) -> float:
    """Modification time of a checkpoint file, or of the newest file in a checkpoint folder."""
    if path.is_dir():
        return max((f.stat().st_mtime for f in path.rglob("*") if f.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


def _load_fsdp2(path: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        dcp_to_torch_save(path, Path(tmp) / "full.pt")
        checkpoint = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
    meta = path / "meta.pt"
    if meta.is_file():
        checkpoint.update(torch.load(meta, map_location="cpu", weights_only=False))
    return checkpoint


def _load_deepspeed(path: Path) -> dict[str, Any]:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(f"{path} is a DeepSpeed checkpoint; reading it needs DeepSpeed: "
                          "pip install 'bitnet_train[distributed]'") from None
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        convert_zero_checkpoint_to_fp32_state_dict(path, Path(tmp) / "full.pt")
        return torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)


def load_full_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Any kind of checkpoint as one in-memory Lightning checkpoint dict (weights unsharded, fp32 for ZeRO)."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "file":
        return load_checkpoint_file(path)
    return _load_fsdp2(path) if kind == "fsdp2" else _load_deepspeed(path)


def complete_state_dict(state: dict[str, torch.Tensor], hyper_parameters: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`state` keyed and checked exactly as PretrainModule.state_dict(), tied weights under every name.

    The module is built on the meta device (no memory, no compute) only to read its names and shapes.
    """
    from bitnet_train.lit.pretrain import PretrainModule

    with torch.device("meta"):
        module = PretrainModule(**hyper_parameters)
    expected = module.state_dict()
    aliases: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    out: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        tensor = state.get(key)
        if tensor is None:  # a tied weight stored under another of its names
            names = next((names for names in aliases.values() if key in names), [key])
            tensor = next((state[n] for n in names if n in state), None)
        if tensor is None:
            raise ConfigError(f"checkpoint lacks {key}: it does not hold a model of its own hyper_parameters")
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ConfigError(f"checkpoint has {key} of shape {tuple(tensor.shape)}, the model {tuple(ref.shape)}")
        out[key] = tensor.detach().to("cpu").contiguous()
    unknown = sorted(set(state) - set(out))
    if unknown:
        raise ConfigError(f"checkpoint has {len(unknown)} entries the model lacks, e.g. {unknown[0]}")
    return out


def consolidate(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Write one Lightning checkpoint (weights, hyper_parameters, step) at `dst` from any kind at `src`."""
    src, dst = Path(src), Path(dst)
    kind = checkpoint_kind(src)
    checkpoint = load_full_checkpoint(src)
    hparams = checkpoint.get("hyper_parameters")
    if not hparams:
        raise ConfigError(f"checkpoint {src} has no hyper_parameters; it was not written by bitnet_train")
    out = {key: checkpoint[key] for key in KEPT_KEYS if key in checkpoint}
    out.setdefault("pytorch-lightning_version", lightning.__version__)  # load_from_checkpoint reads it
    out["state_dict"] = complete_state_dict(checkpoint["state_dict"], hparams)
    out["consolidated_from"] = {"kind": kind, "path": str(src)}
    atomic_torch_save(out, dst)
    return out
