"""One training run of a study: `python -m bitnet_train OVERRIDES` in its own folder, logged to train.log.

Shared by tools/norm_study.py and tools/scaling_study.py: a finished run (metrics.json present) is kept
unless `force`; otherwise the folder starts fresh (Lightning would write last-v1.ckpt beside an old one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_training(out: Path, overrides: list[str], *, threads: int, force: bool = False) -> Path:
    if (out / "metrics.json").is_file() and not force:
        print(f"[{out.name}] done already ({out}); --force to rerun", flush=True)
        return out
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "bitnet_train", *overrides, "callbacks.progress=null",
           "trainer.enable_model_summary=false", f"hydra.run.dir={out}", f"task_name={out.name}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), WANDB_MODE="offline")
    print(f"[{out.name}] {' '.join(overrides)}", flush=True)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"[{out.name}] failed (exit {proc.returncode}); see {out / 'train.log'}")
    print(f"[{out.name}] finished in {time.perf_counter() - started:.0f} s", flush=True)
    return out
