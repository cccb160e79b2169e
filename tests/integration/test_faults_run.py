"""A diverging run (optim.lr=1e4) through the real config: it stops on the first non-finite step and writes no NaN weights."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL, compose_config

from bitnet_train.lit.checkpoint_io import NonFiniteTrainingError
from bitnet_train.run import train


def test_diverging_run_stops_and_keeps_finite_checkpoints(tmp_path, data_cache):
    out = tmp_path / "run"
    cfg = compose_config([*SMALL, f"out_dir={out}", f"data.cache_dir={data_cache}", "optim.lr=1e4",
                          "trainer.max_steps=40", "trainer.val_check_interval=40", "trainer.limit_val_batches=1",
                          "callbacks.checkpoint.every_n_train_steps=1", "trainer.gradient_clip_val=null"])
    with pytest.raises(NonFiniteTrainingError, match=r"non-finite loss/gradients at step \d+") as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message
    step = int(message.split("at step ")[1].split()[0])
    assert step < 40
    last = out / "checkpoints" / "last.ckpt"
    if step > 0:
        assert str(last) in message
        saved = torch.load(last, weights_only=False)
        assert saved["global_step"] == step
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    for line in open(out / "logs" / "monitor.jsonl"):
        json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
