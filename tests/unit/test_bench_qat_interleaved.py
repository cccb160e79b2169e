"""tools/bench_qat_interleaved.py: every variant in one process, ratios paired by round."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_qat_interleaved.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("bench_qat_interleaved", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_are_paired_with_fp_and_every_variant_trains(tool):
    result = tool.measure("tiny", False, ["b158_nonorm"], rounds=3, warmup=0, threads=torch.get_num_threads())
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == ["fp", "b158_nonorm"]  # fp is added and comes first
    assert rows["fp"]["ratio"] == 1.0
    times = result["times"]
    assert len(times["fp"]) == len(times["b158_nonorm"]) == 3
    paired = sorted(t / f for t, f in zip(times["b158_nonorm"], times["fp"]))
    assert rows["b158_nonorm"]["ratio"] == paired[1]  # the median of the per-round ratios, not a ratio of medians
    assert rows["b158_nonorm"]["ratio_p25"] <= rows["b158_nonorm"]["ratio"] <= rows["b158_nonorm"]["ratio_p75"]
    assert math.isfinite(rows["fp"]["loss"]) and math.isfinite(rows["b158_nonorm"]["loss"])
    assert rows["fp"]["loss"] != rows["b158_nonorm"]["loss"]  # two different models, not one timed twice
    assert "BitLinear" in rows["b158_nonorm"]["describe"]


def test_unknown_variant_is_refused_before_any_model_is_built(tool, capsys):
    with pytest.raises(SystemExit) as err:
        tool.main(["--variants", "fp,b185", "--sizes", "tiny"])
    assert err.value.code == 2
    assert "unknown variant 'b185'" in capsys.readouterr().err
