"""The command line end to end on the shipped corpus: a short real run, fast_dev_run, metrics.json."""

from __future__ import annotations

import json
import math

import pytest

from conftest import SMALL, run_cli


@pytest.mark.slow
def test_short_run_writes_checkpoint_and_metrics(tmp_path, data_cache):
    out = tmp_path / "run"
    proc = run_cli([*SMALL, "debug=limit", f"hydra.run.dir={out}", f"data.cache_dir={data_cache}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 20
    assert metrics["tokens_seen"] == 20 * 4 * 64
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["val_perplexity"] < metrics["data"]["vocab_size"]  # better than a uniform guess
    assert (out / "logs" / "metrics.csv").is_file()
    assert not list((out / "checkpoints").glob("*.tmp-*")), "temporary checkpoint files left behind"


def test_fast_dev_run(tmp_path, data_cache):
    proc = run_cli([*SMALL, "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'run'}",
                    f"data.cache_dir={data_cache}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_console_shows_each_line_once_and_counts_steps(tmp_path, data_cache):
    """The console a user sees: every log line once (not plain and then in Hydra's format), no product tips,
    no FLOPs lines, and a progress bar of optimizer steps to trainer.max_steps (not "Epoch 0/-2")."""
    keep = [o for o in SMALL if o not in ("callbacks.progress=null", "trainer.enable_model_summary=false")]
    proc = run_cli([*keep, "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.accumulate_grad_batches=2",
                    f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={data_cache}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert console.count("Seed set to 1234") == 1, console[-3000:]
    assert console.count("`Trainer.fit` stopped: `max_steps=3` reached.") == 1
    assert "Tip:" not in console and "litlogger" not in console and "FLOPs" not in console
    assert "Epoch 0/" not in console and "Trainer already configured" not in console
    assert "Step" in console and "3/3" in console  # optimizer steps, under accumulation of 2 micro-batches
    assert "Total params" in console  # the model table is still there
