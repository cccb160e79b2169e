"""Loss parity of the multi-process strategies against one process, as a Markdown table.

    python tools/distributed_parity.py                      # 2 CPU processes, every strategy, 20 steps
    python tools/distributed_parity.py --accelerator gpu --processes 8 --strategies fsdp2 deepspeed_zero3 \
        -- trainer=gpu model=bitnet_b158_700m

Runs `python -m bitnet_train` once with one process and batch P x B, then once per strategy with P
processes and batch B each (the same global batches), and compares the logged training losses step
by step and the final validation loss. On GPUs with bf16 expect differences of the order of bf16
rounding; in fp32 on CPU they are float rounding. Extra Hydra overrides follow `--`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STRATEGIES = ["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"]


def run(out: Path, args: list[str], env: dict) -> tuple[dict[int, float], dict, float]:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "bitnet_train", f"hydra.run.dir={out}", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    with open(out / "logs" / "metrics.csv") as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    return losses, json.loads((out / "metrics.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    a = parser.parse_args()
    env = dict(os.environ, PYTHONWARNINGS="ignore", WANDB_MODE="offline")
    if a.accelerator == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process, as torchrun does
    common = [f"trainer.accelerator={a.accelerator}", f"trainer.max_steps={a.steps}", "trainer.log_every_n_steps=1",
              f"trainer.val_check_interval={a.steps}", "callbacks.progress=null", "callbacks.quant_stats=null",
              f"optim.warmup_steps={max(1, a.steps // 10)}", *a.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        ref, ref_metrics, ref_s = run(Path(tmp) / "one", [*common, "trainer.devices=1",
                                                           f"data.batch_size={a.batch_size * a.processes}"], env)
        rows = [f"| one process, batch {a.batch_size * a.processes} | - | - | {ref_metrics['val_loss']:.6f} | {ref_s:.0f} |"]
        for name in a.strategies:
            losses, metrics, seconds = run(Path(tmp) / name, [*common, f"trainer.devices={a.processes}",
                                                              f"strategy={name}", f"data.batch_size={a.batch_size}"], env)
            if sorted(losses) != sorted(ref):
                sys.exit(f"{name}: logged steps {sorted(losses)} differ from {sorted(ref)}")
            worst = max(abs(losses[s] - ref[s]) for s in ref)
            rows.append(f"| {name}, {a.processes} x batch {a.batch_size} | {worst:.2e} | "
                        f"{abs(metrics['val_loss'] - ref_metrics['val_loss']):.2e} | {metrics['val_loss']:.6f} | {seconds:.0f} |")
    print(f"{a.steps} steps, final training loss of one process {ref[max(ref)]:.4f}\n")
    print("| run | max abs train-loss diff | val-loss diff | val loss | wall s |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
