#!/usr/bin/env python
"""Shared activation codes (quant/shared_codes.py) on and off, side by side in one process.

q/k/v and gate/up read one activation each; with sharing the first of them quantizes it and backward
dequantizes it once. The effect on an eager training step is a few percent at most, less than
tools/bench_qat.py resolves between its one-process-per-variant workers (their step times differ by
several percent between processes running the same code). So this tool builds two identical `b158`
models of bench_qat.py (same seed, same batches) in one process and alternates their steps, one with
`BitLinear.share_input_codes` on and one with it off, swapping the models' roles halfway so that
neither model's memory layout favours one setting. It reports the median step time of each setting, the
ratio, and whether the two settings gave the same losses (they should, bit for bit).

  .venv/bin/python tools/bench_shared_codes.py                        # tiny and d512, 20 steps each
  .venv/bin/python tools/bench_shared_codes.py --sizes w2560 --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_qat  # noqa: E402 (also puts the repository on sys.path)


def _set_sharing(runner: bench_qat.Runner, on: bool) -> None:
    from bitnet_train.quant.bitlinear import BitLinear

    for module in runner.model.modules():
        if isinstance(module, BitLinear):
            module.share_input_codes = on


def measure(size: str, steps: int, warmup: int, threads: int) -> dict:
    """Step times (s) with sharing on and off, and whether every pair of steps gave the same loss."""
    runners = [bench_qat.Runner(size, "b158", False, "cpu", threads) for _ in range(2)]
    times = {True: [], False: []}
    same_loss = True
    for i in range(warmup + steps):
        # first half: model 0 shares; second half: model 1 does; the order within a pair alternates
        sharer = 0 if i < warmup + steps // 2 else 1
        pair = [(sharer, True), (1 - sharer, False)]
        if i % 2:
            pair.reverse()
        losses = {}
        for index, on in pair:
            _set_sharing(runners[index], on)
            dt = runners[index].step()
            losses[on] = float(runners[index].last_loss)
            if i >= warmup:
                times[on].append(dt)
        same_loss &= losses[True] == losses[False]
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"size": size, "on_ms": on * 1e3, "off_ms": off * 1e3, "ratio": on / off, "same_loss": same_loss,
            "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,d512", help=f"comma list of {', '.join(bench_qat.SIZES)}")
    p.add_argument("--steps", type=int, default=20, help="measured steps per setting")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per setting first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    import os

    import torch

    threads = args.threads or os.cpu_count() or 1
    print(f"torch {torch.__version__}, {threads} threads, eager b158 training steps of tools/bench_qat.py "
          f"(batch {bench_qat.BATCH} x {bench_qat.SEQ}); medians\n")
    print("| size | shared ms/step | not shared ms/step | shared / not shared | same losses | steps each |")
    print("|---|---|---|---|---|---|")
    ok = True
    for size in args.sizes.split(","):
        r = measure(size, args.steps, args.warmup, threads)
        ok &= r["same_loss"]
        print(f"| {size} | {r['on_ms']:.0f} | {r['off_ms']:.0f} | {r['ratio']:.3f} | "
              f"{'yes' if r['same_loss'] else 'NO'} | {r['steps']} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
