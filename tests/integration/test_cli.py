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
