"""BitLinear under FSDP2 and ZeRO-3 computes gamma = mean|W| over the whole weight (docs/METHODS.md#distributed-sharding).

Two CPU processes (torchrun, gloo) run sharded_bitlinear_worker.py. The weight is made so that
its two shards have very different scales, so a scale taken on a shard could not pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the `distributed` extra")
    out = tmp_path_factory.mktemp("sharded_bitlinear")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE / "sharded_bitlinear_worker.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_the_test_weight_has_shards_with_different_scales(results):
    ref = results[0]
    low, high = sorted(ref["shard_gammas"])
    assert high > 1.5 * low  # a shard's mean|W| is far from the whole's: sharded scales would show
    assert ref["reference"]["seen"]["gamma"] == pytest.approx(ref["reference"]["gamma_full"], rel=1e-7)


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_forward_sees_the_whole_weight_and_matches_one_process(results, strategy):
    for rank, r in enumerate(results):
        seen = r[strategy]["seen"]
        assert seen["shape"] == [37, 64], (rank, seen)
        assert seen["gamma"] == pytest.approx(r["reference"]["gamma_full"], rel=1e-7), (rank, seen)
        assert r[strategy]["max_abs_diff"] < 1e-6, (rank, r[strategy])


def test_fsdp2_shards_and_gathers_outside_forward(results):
    assert sorted(r["fsdp2"]["local_rows"] for r in results) == [18, 19]  # really sharded, unevenly
    for r in results:
        assert r["fsdp2"]["grad_max_abs_diff"] < 1e-6
        assert r["fsdp2"]["outside_forward_equal"]


def test_zero3_placeholder_is_refused_and_gathered_is_whole(results):
    for r in results:
        z = r["zero3"]
        assert z["placeholder_shape"] != [37, 64]
        assert "sees a weight of shape" in z["refused"]
        assert z["gathered_equal"]
