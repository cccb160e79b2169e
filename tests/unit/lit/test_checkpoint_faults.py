"""Checkpoint writes under faults: a writer killed with SIGKILL mid-write, and a full (size-capped tmpfs) disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnet_train.lit.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointSpaceError,
    atomic_torch_save,
    load_checkpoint_file,
)
from bitnet_train.lit.run_checkpoints import newest_resumable

WRITER = r"""
import sys, time, torch
from bitnet_train.lit.checkpoint_io import atomic_torch_save

class Slow:  # pickling blocks: the temporary file exists, incomplete, while it sleeps
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(60)
        return (int, (0,))

atomic_torch_save({"state_dict": {"w": torch.ones(1 << 20)}, "slow": Slow()}, sys.argv[1])
"""


def _complete(path: Path) -> dict:
    return load_checkpoint_file(path)


def test_kill_9_during_a_write_leaves_no_temporary_after_the_next_start(tmp_path):
    folder = tmp_path / "checkpoints"
    atomic_torch_save({"state_dict": {"w": torch.zeros(3)}, "global_step": 10}, folder / "last.ckpt")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder / "last.ckpt")], stdout=subprocess.PIPE,
                              text=True, env=env)
    assert writer.stdout.readline().strip() == "writing"
    temps = list(folder.glob("last.ckpt.tmp-*"))
    assert [p.name for p in temps] == [f"last.ckpt.tmp-{writer.pid}"]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert temps[0].exists()  # a killed writer cleans nothing up itself

    # a live writer's temporary is not touched
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / f"step-000020.ckpt.tmp-{live.pid}").write_bytes(b"partial")
        assert newest_resumable(tmp_path) == str(folder / "last.ckpt")  # the next start, ckpt_path=auto
        assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", f"step-000020.ckpt.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()
    assert _complete(folder / "last.ckpt")["global_step"] == 10


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_gives_one_line_error_and_keeps_last_ckpt(small_disk):
    io = AtomicCheckpointIO()
    last = small_disk / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 4}, last)
    big = {"state_dict": {"w": torch.zeros(1 << 20)}, "global_step": 8}  # 4 MiB: more than the disk
    with pytest.raises(CheckpointSpaceError) as err:
        io.save_checkpoint(big, last)
    message = str(err.value)
    assert "\n" not in message and str(last.parent) in message and "needs about 4.2 MB" in message
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert _complete(last)["global_step"] == 4


def test_disk_filling_up_during_the_write_is_the_same_error(small_disk, monkeypatch):
    """The size check passes (the space is taken by another writer meanwhile): torch's own failure is mapped too."""
    import bitnet_train.lit.checkpoint_io as cio

    last = small_disk / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.zeros(10)}, "global_step": 4}, last)
    monkeypatch.setattr(cio, "SPACE_MARGIN", 0.0)  # skip the early check: the write itself runs out of space
    with pytest.raises(CheckpointSpaceError, match=f"in {small_disk}: it needs about"):
        atomic_torch_save({"state_dict": {"w": torch.zeros(1 << 20)}}, last)
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.ckpt"]
    assert _complete(last)["global_step"] == 4


def test_a_fresh_start_with_the_faults_callback_removes_dead_writers_temporaries(tmp_path):
    from faults_helpers import Poisoned, trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from bitnet_train.lit.callbacks import NonFiniteGuard

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "ck"
    folder.mkdir()
    stale = folder / f"step-000002.ckpt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    trainer(tmp_path, [ModelCheckpoint(dirpath=folder, every_n_train_steps=2), NonFiniteGuard()], 2,
            plugins=[AtomicCheckpointIO()]).fit(Poisoned())
    assert not stale.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=2.ckpt"]
