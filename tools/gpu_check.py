"""One check for the first machine with a CUDA GPU, meant to finish in under 8 minutes.

Runs, in order, each with its own time limit, and prints one summary table at the end:
  1. the GPU-marked tests (pytest -m gpu), which include the Triton W2A8 kernel's exactness test;
  2. tools/bench_kernel.py (the kernel's throughput);
  3. one bf16 training step (Lightning's fast_dev_run) of the tiny model under each strategy on one
     GPU: ddp, fsdp2, deepspeed_zero2, deepspeed_zero3;
  4. tools/bench_qat.py --device cuda (QAT vs full-precision step time and peak memory).
Without a CUDA GPU it prints the commands it would run and exits 0.

    python tools/gpu_check.py [--dry-run] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3")


def checks(python: str, run_dir: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of every check, in order."""
    out = [
        ("gpu tests (Triton kernel exactness included)", [python, "-m", "pytest", "-q", "-m", "gpu", "tests"], 150),
        ("bench_kernel", [python, "tools/bench_kernel.py", "--rep", "50"], 60),
    ]
    for strategy in STRATEGIES:
        out.append((f"bf16 step, strategy={strategy}",
                    [python, "-m", "bitnet_train", f"strategy={strategy}", "debug=fast_dev_run",
                     "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed",
                     f"hydra.run.dir={run_dir}/{strategy}"], 60))
    out.append(("bench_qat --device cuda",
                [python, "tools/bench_qat.py", "--device", "cuda", "--rounds", "2", "--sizes", "tiny,d512,w2560",
                 "--peers", "--patience", "0", "--max-foreign-load", "100"], 150))
    return out


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _run(cmd: list[str], limit: int) -> tuple[str, float, str]:
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or "")[-2000:] if isinstance(exc.stdout, str) else ""
        return "timeout", time.monotonic() - start, tail
    text = proc.stdout + proc.stderr
    sys.stdout.write(text[-4000:])
    return ("ok" if proc.returncode == 0 else f"failed ({proc.returncode})"), time.monotonic() - start, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--budget", type=float, default=480.0, help="stop starting checks after this many seconds")
    args = p.parse_args(argv)
    run_dir = tempfile.mkdtemp(prefix="gpu_check_")
    plan = checks(sys.executable, run_dir)
    if args.dry_run or not has_cuda():
        if not args.dry_run:
            print("No CUDA GPU here; on a machine with one, gpu_check would run:")
        for name, cmd, limit in plan:
            print(f"  [{name}] (limit {limit} s): {' '.join(cmd)}")
        return 0
    start, rows = time.monotonic(), []
    for name, cmd, limit in plan:
        left = args.budget - (time.monotonic() - start)
        if left < 10:
            rows.append((name, "skipped (budget)", 0.0))
            continue
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        status, seconds, _ = _run(cmd, int(min(limit, left)))
        rows.append((name, status, seconds))
    print("\n| check | result | seconds |\n|---|---|---|")
    for name, status, seconds in rows:
        print(f"| {name} | {status} | {seconds:.0f} |")
    return 0 if all(status == "ok" for _, status, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
