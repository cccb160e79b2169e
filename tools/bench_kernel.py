"""Benchmark the Triton W2A8 ternary matmul against torch's bf16 matmul on a CUDA GPU.

    python tools/bench_kernel.py [--shapes 2b4t] [--m 1 16 128] [--peak-gbps 3350]

For each BitNet b1.58 2B4T projection shape (q/o 2560x2560, k/v 640x2560, gate/up 6912x2560,
down 2560x6912) and each M (tokens per call): checks the kernel's int32 result against the torch
reference, then times the kernel (int8 activations, 2-bit weights, fp32 scales, bf16 output) and
`x @ w.T` in bf16 with triton.testing.do_bench, which clears a 256 MB buffer before every call so
that the weights come from HBM, not L2 (these matrices fit in a 50 MB L2). Reports median times,
the speedup, and the share of the GPU's memory bandwidth each achieves (bytes read and written /
time / peak). Activation quantization is not part of the kernel time (it is a separate op).
On a machine without a CUDA GPU it says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

import torch

# HBM peak bandwidth in GB/s by device name (vendor data sheets); --peak-gbps overrides
PEAK_GBPS = {"H100 80GB HBM3": 3350, "H100 SXM": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
             "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555,
             "L40S": 864, "A10G": 600, "RTX 4090": 1008}
SHAPES_2B4T = {"q_proj/o_proj": (2560, 2560), "k_proj/v_proj": (640, 2560), "gate_proj/up_proj": (6912, 2560),
               "down_proj": (2560, 6912)}


def peak_gbps(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_GBPS.items():
        if key.lower() in name.lower():
            return value
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=[1, 16, 128], help="tokens per matmul")
    p.add_argument("--peak-gbps", type=float, help="memory bandwidth of the GPU (default: from its name)")
    p.add_argument("--rep", type=int, default=200, help="do_bench measurement time in ms")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernel.py needs a CUDA GPU and found none. On CPU the kernel is checked for exactness under "
              "Triton's interpreter instead: TRITON_INTERPRET=1 pytest tests/unit/kernels")
        sys.exit(1)
    import triton.testing

    from bitnet_train.kernels.packing import pack_k2
    from bitnet_train.kernels.reference import ternary_matmul_int32_reference
    from bitnet_train.kernels.triton_w2a8 import ternary_matmul_triton

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_gbps(name, args.peak_gbps)
    print(f"device: {name}; peak bandwidth: {peak or 'unknown (pass --peak-gbps)'} GB/s; torch {torch.__version__}, "
          f"triton {triton.__version__}")
    print("| shape (N x K) | M | W2A8 us | bf16 us | speedup | W2A8 % HBM | bf16 % HBM |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator(device="cpu").manual_seed(0)
    for label, (n, k) in SHAPES_2B4T.items():
        q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8).to(device)
        packed = pack_k2(q)
        w_scale = torch.tensor([0.02], device=device)
        w_bf16 = (q.float() * 0.02).to(torch.bfloat16)
        for m in args.m:
            x_codes = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8).to(device)
            x_mult = torch.rand(m, generator=g).to(device) * 0.01
            x_bf16 = (x_codes.float() * x_mult[:, None]).to(torch.bfloat16)
            acc = ternary_matmul_triton(x_codes, x_mult, packed, w_scale, k, int_out=True)
            if not torch.equal(acc, ternary_matmul_int32_reference(x_codes, packed, k)):
                sys.exit(f"kernel result differs from the reference for {label} M={m}")
            t_w2 = triton.testing.do_bench(
                lambda: ternary_matmul_triton(x_codes, x_mult, packed, w_scale, k, torch.bfloat16),
                rep=args.rep, return_mode="median") * 1e3
            t_bf = triton.testing.do_bench(lambda: x_bf16 @ w_bf16.t(), rep=args.rep, return_mode="median") * 1e3
            bytes_w2 = packed.numel() + x_codes.numel() + 4 * m + 2 * m * n
            bytes_bf = 2 * (n * k + m * k + m * n)
            share = (lambda b, t: f"{100 * b / (t * 1e-6) / (peak * 1e9):.0f}%") if peak else (lambda b, t: "n/a")
            print(f"| {label} {n} x {k} | {m} | {t_w2:.1f} | {t_bf:.1f} | {t_bf / t_w2:.2f}x | "
                  f"{share(bytes_w2, t_w2)} | {share(bytes_bf, t_bf)} |")


if __name__ == "__main__":
    main()
