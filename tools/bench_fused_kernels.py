#!/usr/bin/env python
"""The integer forward's elementwise work: torch ops against the kernels torch.compile generates from them.

For each function of bitnet_train/quant/fused_kernels.py at the shapes of tools/bench_qat.py's sizes
(2048 tokens; K the inputs of the projections), times the plain torch ops and the compiled kernel side
by side (interleaved rounds, best of --rounds after a warm-up, same inputs), and checks that they give
the same numbers (norm codes: the count of codes that differ, see the module's note).

  .venv/bin/python tools/bench_fused_kernels.py                 # tiny, d512 and w2560 widths
  .venv/bin/python tools/bench_fused_kernels.py --widths 256,688 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--widths", default="256,688,512,1376,2560,6912",
                   help="comma list of K (inputs of q/k/v/gate/up and of down_proj at tiny, d512, w2560)")
    p.add_argument("--rounds", type=int, default=9, help="timed calls per form, interleaved (best is reported)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    import torch

    from bitnet_train.quant import fused_kernels as fk

    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    m = args.tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {m} tokens; ms per call, best of "
          f"{args.rounds}\n")
    print("| kernel | K | torch ops ms | fused ms | fused / torch ops | same numbers |")
    print("|---|---|---|---|---|---|")
    for k in [int(w) for w in args.widths.split(",")]:
        x = torch.randn(m, k, generator=g) * 3
        gain = torch.rand(k, generator=g) * 0.1 + 0.02
        acc = torch.randint(-127 * 64, 127 * 64, (m, k), generator=g, dtype=torch.int32)
        scale = torch.rand(m, 1, generator=g) + 0.5
        codes = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        cases = [
            ("activation codes", fk.activation_codes, (x, False)),
            ("norm + activation codes", fk.norm_activation_codes, (x, gain, 1e-5, False)),
            ("epilogue (int32 [M, N])", fk.epilogue, (acc, scale, torch.tensor(40.0), None, torch.float32)),
            ("dequantize x_q", fk.dequantize, (codes, scale, torch.float32)),
        ]
        for name, fn, fargs in cases:
            plain_out = fn(*fargs)
            fused_out = fk.run(fn, True, 1 << 62, *fargs)  # compiles on first use (not timed)
            for _ in range(2):
                fn(*fargs)
                fk.run(fn, True, 1 << 62, *fargs)
            tp = tf = float("inf")
            for _ in range(args.rounds):
                tp = min(tp, _seconds(lambda: fn(*fargs)))
                tf = min(tf, _seconds(lambda: fk.run(fn, True, 1 << 62, *fargs)))
            if name.startswith("norm"):
                differ = int((plain_out[0] != fused_out[0]).sum())
                same = "yes" if differ == 0 else f"{differ} of {plain_out[0].numel()} codes by 1 (rstd's sum order)"
            else:
                a = plain_out if isinstance(plain_out, torch.Tensor) else plain_out[0]
                b = fused_out if isinstance(fused_out, torch.Tensor) else fused_out[0]
                same = "yes" if torch.equal(a, b) else "NO"
            print(f"| {name} | {k} | {tp * 1e3:.3f} | {tf * 1e3:.3f} | {tf / tp:.2f} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
