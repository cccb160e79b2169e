#!/usr/bin/env python
"""bench_qat.py's variants in one process, their training steps interleaved: ratios without the process spread.

tools/bench_qat.py times each variant in its own worker process. Step times of the same code differ by
several percent between processes (allocator state, memory placement), as much as the differences between
b158 and torchao that issue 14 asks about. This tool builds every variant's model, optimizer and batches
(bench_qat.Runner: same seed, same data) in one process and runs rounds of one training step each, the
variants' order rotated every round so that each goes first equally often. Per variant it reports the
median of its step time divided by fp's in the same round (a paired ratio: slow and fast phases of the
machine touch every variant of a round alike), that ratio's p25-p75, and the median step time.
Compiled mode compiles every model in this process (one torch.compile per model).

  .venv/bin/python tools/bench_qat_interleaved.py                                  # tiny, d512; eager, compiled
  .venv/bin/python tools/bench_qat_interleaved.py --sizes d512 --modes compiled --rounds 40

The models live side by side, so memory is not measured here (bench_qat.py --exact-rss does that).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_qat  # noqa: E402 (also puts the repository on sys.path)


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """p25, median, p75 (the median alone for fewer than two values)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def measure(size: str, compiled: bool, variants: list[str], rounds: int, warmup: int, threads: int) -> dict:
    """Paired ratios to fp per variant over `rounds` interleaved rounds (fp first in `variants` or added)."""
    names = ["fp", *[v for v in variants if v != "fp"]]
    runners = {name: bench_qat.Runner(size, name, compiled, "cpu", threads) for name in names}
    describe = {name: runner.describe for name, runner in runners.items()}
    for _ in range(warmup):
        for runner in runners.values():
            runner.step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(runners[name].step())
    losses = {name: float(runner.last_loss) for name, runner in runners.items()}
    rows = []
    for name in names:
        paired = [t / f for t, f in zip(times[name], times["fp"])]
        p25, med, p75 = quantiles(paired)
        rows.append({"variant": name, "ratio": med, "ratio_p25": p25, "ratio_p75": p75,
                     "ms": statistics.median(times[name]) * 1e3, "loss": losses[name], "describe": describe[name]})
    return {"size": size, "mode": "compiled" if compiled else "eager", "rounds": rounds, "rows": rows,
            "times": times}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,d512", help=f"comma list of {', '.join(bench_qat.SIZES)}")
    p.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument("--variants", default="fp,b158,b158_nonorm,torchao",
                   help="comma list of bench_qat.py's variants, peers included (fp is always run)")
    p.add_argument("--rounds", type=int, default=20, help="measured rounds (one step of every variant each)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant first (compile included)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    problems = [f"unknown variant {v!r} (known: {', '.join(bench_qat._bench_peers.VARIANTS)})"
                for v in variants if v not in bench_qat._bench_peers.VARIANTS]
    problems += [f"unknown size {s!r} (known: {', '.join(bench_qat.SIZES)})" for s in sizes if s not in bench_qat.SIZES]
    problems += [f"unknown mode {m!r} (eager, compiled)" for m in modes if m not in ("eager", "compiled")]
    if args.rounds < 1:
        problems.append("--rounds must be at least 1")
    if problems:
        p.error("; ".join(problems))
    import os

    import torch

    threads = args.threads or os.cpu_count() or 1
    print(f"torch {torch.__version__}, {threads} threads, cpu; training steps of tools/bench_qat.py "
          f"(batch {bench_qat.BATCH} x {bench_qat.SEQ}), all variants in one process, rounds interleaved\n")
    print("| size | mode | variant | x FP (paired median) | p25-p75 | step ms (median) | rounds |")
    print("|---|---|---|---|---|---|---|")
    described: dict[str, str] = {}
    for size in sizes:
        for mode in modes:
            try:
                result = measure(size, mode == "compiled", variants, args.rounds, args.warmup, threads)
            except bench_qat._bench_peers.Unavailable as err:
                print(f"| {size} | {mode} | - | unavailable: {err} | | | |", flush=True)
                continue
            for row in result["rows"]:
                described[row["variant"]] = row["describe"]
                print(f"| {size} | {mode} | {row['variant']} | {row['ratio']:.3f} | {row['ratio_p25']:.3f}-"
                      f"{row['ratio_p75']:.3f} | {row['ms']:.0f} | {result['rounds']} |", flush=True)
    print("\nvariants:")
    for name, text in described.items():
        print(f"  {name:<18} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
