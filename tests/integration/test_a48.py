"""The BitNet a4.8 and v2 experiments end to end on the shipped corpus (shrunk): the two-stage switch at
its step, marked in the monitor; the final model with its low-bit schemes; bad settings refused."""

from __future__ import annotations

import json

import pytest

from bitnet_train.config import ConfigError
from bitnet_train.run import train
from conftest import SMALL, compose_config


def _records(out):
    lines = [json.loads(line) for line in (out / "logs" / "monitor.jsonl").read_text().splitlines()]
    return lines


@pytest.mark.parametrize("experiment", ["pretrain_a48_tiny", "pretrain_v2_a4_tiny"])
def test_two_stage_run(tmp_path, data_cache, experiment):
    out = tmp_path / experiment
    cfg = compose_config([f"+experiment={experiment}", *SMALL, "model.intermediate_size=128", f"out_dir={out}",
                          f"data.cache_dir={data_cache}", "trainer.max_steps=8", "trainer.val_check_interval=8",
                          "trainer.limit_val_batches=2", "quant.activation_schemes_at=0.75",
                          "quant.activation_schemes_optimizer=reset", "callbacks.spike_monitor.min_history=3"])
    metrics = train(cfg)
    assert metrics["steps"] == 8 and metrics["val_perplexity"] < 5000
    records = _records(out)
    marked = [r for r in records if r.get("event") == "transition"]
    assert [(r["step"], r["name"]) for r in marked] == [(6, "activations")]
    start = next(r for r in records if r.get("event") == "start")
    assert start["transitions"]


def test_bad_hadamard_size_refused_before_training(tmp_path, data_cache):
    cfg = compose_config(["+experiment=pretrain_v2_a4_tiny", *SMALL, f"out_dir={tmp_path}",
                          f"data.cache_dir={data_cache}", "trainer.max_steps=4"])  # SMALL's intermediate_size=160
    with pytest.raises(ConfigError, match="power-of-two input size, got 160"):
        train(cfg)
