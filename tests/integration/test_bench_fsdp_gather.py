"""tools/bench_fsdp_gather.py: every gather and forward trained in the same rounds, bytes counted per step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_fsdp_gather.py"
pytestmark = pytest.mark.slow


def test_table_has_every_gather_and_forward_with_fewer_bytes_for_codes():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(TOOL), "--hidden", "32", "--layers", "1", "--heads", "2", "--ffn", "64",
                           "--seq", "16", "--batch", "1", "--steps", "2", "--int-matmul", "auto,off"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| gather")]
    by_name = {r[0]: r for r in rows}
    assert list(by_name) == [f"{g}, int_matmul={f}" for f in ("auto", "off") for g in ("latent", "codes", "packed")]
    mib = {name: float(r[1].split()[0]) for name, r in by_name.items()}
    for fwd in ("auto", "off"):
        latent, codes, packed = (f"{g}, int_matmul={fwd}" for g in ("latent", "codes", "packed"))
        assert mib[packed] < mib[codes] < mib[latent]  # bytes are counted, and the codes travel smaller
        assert by_name[packed][3] == by_name[codes][3]  # packing changes the bytes, not the numbers
        assert len(by_name[latent][3].split(",")) == 3  # the warmup round and 2 measured rounds
    assert mib["codes, int_matmul=auto"] == mib["codes, int_matmul=off"]
    first = by_name["latent, int_matmul=auto"]
    assert first[2] == "1.000" and first[5] == "1.000 (1.000-1.000)"  # times against the first row, paired by round
