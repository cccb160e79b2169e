"""Checkpoint writes are atomic and unreadable checkpoints give one clear error."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.config import ConfigError
from bitnet_train.lit.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "step": 1}, path)

    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)

    loaded = io.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "temporary file left behind"


def test_truncated_checkpoint_is_a_config_error(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="corrupted"):
        load_checkpoint_file(path)


def test_not_a_lightning_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(ConfigError, match="state_dict"):
        load_checkpoint_file(path)
