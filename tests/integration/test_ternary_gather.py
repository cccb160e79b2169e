"""FSDP2 with `strategy.gather=codes` (parallel/ternary_gather.py) computes what the latent-weight gather
computes, from a quarter of the bytes; `strategy.gather=packed` computes what `codes` computes, bit for bit,
from a sixteenth for weights whose rows split evenly over the ranks.

Two CPU processes (torchrun, gloo) run ternary_gather_worker.py: a model whose first weight has shards
of very different scales, one process whole (the reference) and FSDP2 both ways. The codes path's
scale is a sum of the shards' sums (another order than one process's mean: up to 1 ulp apart), so it
is equal to fp32 rounding, not bit for bit. The integer forward (int_matmul auto) runs under every gather
and matches its one-process run (the code gathers read codes and scale back from the gathered Q_w(W)).
The whole-run check (losses, resume, consolidated
weights) is tests/integration/test_distributed.py's `fsdp2_codes` case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ternary_gather")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE / "ternary_gather_worker.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_both_weights_are_wrapped_and_sharded(results):
    for r in results:
        assert r["codes"]["wrapped"] == ["0", "2"]
        assert r["packed"]["wrapped"] == ["0", "2"]
        assert r["codes"]["local_type"] == "TernaryGatherWeight" and r["latent"]["local_type"] == "Tensor"
        assert r["packed"]["local_type"] == "PackedTernaryGatherWeight"
        assert r["codes"]["state_types"] == r["packed"]["state_types"] == ["Tensor"]  # checkpoints hold plain tensors


@pytest.mark.parametrize("mode", ["latent", "codes", "packed"])
def test_forward_backward_and_steps_match_one_process(results, mode):
    for r in results:
        m = r[mode]
        assert m["w_seen"] <= 1e-8  # the weight the forward multiplied: the whole matrix's Q_w(W)
        assert m["w_seen_ternary"] == [-1.0, 0.0, 1.0]  # {-gamma, 0, gamma}
        assert m["y"] <= 1e-6 and m["x_grad"] <= 1e-6 and m["w_grad"] <= 1e-6, m
        for got, ref in zip(m["losses"], r["reference_losses"]):
            assert got == pytest.approx(ref, rel=1e-6)
        # after 3 AdamW steps at lr 1e-2 (3e-2 of travel): Adam's normalized step turns the last bits of a
        # gradient into ~1e-4 of a step (measured 2.3e-6 for codes, 0 for latent)
        assert m["weights"] <= 1e-5, m


def test_codes_gather_a_quarter_of_the_bytes(results):
    for r in results:
        b = r["codes"]["bytes"]
        # per forward and backward re-gather: 37 rows padded to 38, 64 columns, and 64 x 37, two ranks
        assert b["codes"] > 0 and b["latent"] == 4 * b["codes"]
        assert r["latent"]["bytes"] == {"codes": 0, "latent": 0}


def test_packed_codes_compute_what_int8_codes_compute_bit_for_bit(results):
    for r in results:
        assert r["packed"]["losses_hex"] == r["codes"]["losses_hex"]
        assert r["packed"]["weights_bits"] == r["codes"]["weights_bits"]


def test_packed_codes_gather_a_sixteenth_of_the_bytes_where_rows_split_evenly(results):
    for r in results:
        b = r["packed"]["bytes"]
        # per gather, two ranks: the 37 x 64 weight splits unevenly (19 + 18 rows, padded to 19): int8 codes,
        # 2 * 19 * 64 bytes; the 64 x 37 one evenly (32 rows): 2 * 32 * 37 codes, 4 to a byte
        latent, codes = 4 * 2 * (19 * 64 + 32 * 37), 2 * 19 * 64 + 2 * 32 * 37 // 4
        gathers = b["latent"] // latent
        assert gathers > 0 and b["latent"] == gathers * latent and b["codes"] == gathers * codes
        assert b["latent"] == r["codes"]["bytes"]["latent"]


@pytest.mark.parametrize("mode", ["latent", "codes", "packed"])
def test_integer_forward_runs_under_every_gather_and_matches_one_process(results, mode):
    for r in results:
        m = r[f"int_{mode}"]
        # 3 steps, each through both layers' integer forward (the first with its norm fused); no F.linear
        assert m["calls"] == {"int_bitlinear": 3, "norm_int_bitlinear": 3} and m["fake_quant_calls"] == 0, m
        # against one process's integer forward: the latent gather bit for bit; the code gathers' scale is
        # read back from the gathered Q_w(W) (1 / max|W_q| against 1 / mean|W|: an ulp or two apart)
        tol = 0.0 if mode == "latent" else 1e-6
        assert m["y"] <= tol and m["x_grad"] <= tol and m["w_grad"] <= tol, m
        for got, ref in zip(m["losses"], r["int_reference"]["losses"]):
            assert got == pytest.approx(ref, rel=1e-6)
        assert m["weights"] <= 1e-5, m
