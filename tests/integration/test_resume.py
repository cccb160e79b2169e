"""Resuming from a checkpoint continues exactly: N steps straight == N/2 + resume + N/2 (CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from bitnet_train.run import train
from conftest import SMALL, compose_config


def _losses(out: Path) -> dict[int, float]:
    with open(out / "logs" / "metrics.csv") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


def _run(out: Path, cache: Path, *extra: str) -> dict:
    cfg = compose_config([*SMALL, f"out_dir={out}", f"data.cache_dir={cache}", "trainer.max_steps=8",
                          "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
                          "callbacks.checkpoint.every_n_train_steps=4", "callbacks.checkpoint.save_top_k=-1",
                          "callbacks.quant_stats.every_n_steps=2", *extra])
    return train(cfg)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, data_cache):
    straight = tmp_path / "straight"
    metrics = _run(straight, data_cache)
    assert metrics["steps"] == 8
    mid = straight / "checkpoints" / "step-000004.ckpt"
    assert mid.is_file(), sorted(p.name for p in (straight / "checkpoints").iterdir())

    resumed = tmp_path / "resumed"
    metrics_resumed = _run(resumed, data_cache, f"ckpt_path={mid}")
    assert metrics_resumed["steps"] == 8
    assert metrics_resumed["tokens_seen"] == metrics["tokens_seen"]

    a, b = _losses(straight), _losses(resumed)
    later = sorted(step for step in b)
    assert later and min(later) >= 4, later
    for step in later:
        assert b[step] == a[step], f"step {step}: resumed {b[step]} != straight {a[step]}"
    assert metrics_resumed["val_loss"] == metrics["val_loss"]

    final_a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    final_b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key
