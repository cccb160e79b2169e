"""Time the integer forward's exact code-product kernels side by side (bitnet_train/quant/code_matmul.py).

For each [M, K] x [K, N] product of int8 activation codes and ternary weight codes, every kernel this
machine has (torch._int_mm, FBGEMM's int8 GEMM with fp32 output, an fp32 GEMM of the codes) runs on the
same codes, interleaved, best of --repeats after a warm-up; it prints the times, the ratio to the fp32
GEMM of the codes, whether every kernel returned the same integers, and which kernel the calibration
(the process-wide choice BitLinear uses) picks here. The FBGEMM weight packing is timed separately
(it runs once per optimizer step in eager training, once per forward under torch.compile).

    .venv/bin/python tools/bench_code_matmul.py
    .venv/bin/python tools/bench_code_matmul.py --shapes 2048x1376x512,2048x6912x2560 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SHAPES = "2048x256x688,2048x512x1376,2048x1376x512,2048x2560x6912,2048x6912x2560"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of MxKxN (default: the bench_qat sizes' "
                   "projections with 2048 tokens)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from bitnet_train.quant import code_matmul as cm

    torch.set_num_threads(args.threads)
    kernels = cm.available_cpu_kernels()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads; kernels here: {', '.join(kernels)}; calibration picks: {cm.cpu_kernel()}")
    print(f"| M x K x N | {' | '.join(k + ' ms' for k in kernels)} | {' | '.join(k + ' / float' for k in kernels)} "
          f"| FBGEMM pack ms | same integers |")
    print("|---" * (2 * len(kernels) + 3) + "|")
    for shape in args.shapes.split(","):
        m, k, n = (int(v) for v in shape.lower().split("x"))
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        w = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
        xf = x.float()
        outs = {kern: cm._run(kern, x, xf, w) for kern in kernels}  # warm-up (packs the FBGEMM weight once)
        same = all(torch.equal(o.long(), outs["float"].long()) for o in outs.values())
        best = {kern: float("inf") for kern in kernels}
        for _ in range(args.repeats):
            for kern in kernels:
                t0 = time.perf_counter()
                cm._run(kern, x, xf, w)
                best[kern] = min(best[kern], time.perf_counter() - t0)
        pack = float("nan")
        if "fbgemm" in kernels:
            pack = float("inf")
            for _ in range(max(args.repeats // 2, 1)):
                fresh = w.clone()
                t0 = time.perf_counter()
                cm.fbgemm_packed(fresh)
                pack = min(pack, time.perf_counter() - t0)
        times = " | ".join(f"{best[kern] * 1e3:.1f}" for kern in kernels)
        ratios = " | ".join(f"{best[kern] / best['float']:.2f}" for kern in kernels)
        print(f"| {m} x {k} x {n} | {times} | {ratios} | {pack * 1e3:.1f} | {'yes' if same else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
