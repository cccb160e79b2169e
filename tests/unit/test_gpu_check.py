"""tools/gpu_check.py without a GPU: prints every check it would run and exits 0."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_without_gpu_prints_plan_and_exits_0():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this is the CPU behaviour on every machine
    proc = subprocess.run([sys.executable, "tools/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "No CUDA GPU" in out
    for needle in ("-m gpu", "bench_kernel.py", "strategy=ddp", "strategy=fsdp2", "strategy=deepspeed_zero2",
                   "strategy=deepspeed_zero3", "trainer.precision=bf16-mixed", "bench_qat.py --device cuda"):
        assert needle in out, needle
