"""Bytes FSDP2 all-gathers per training step: latent fp32 weights, int8 ternary codes, 2-bit packed codes.

    python tools/bench_fsdp_gather.py                       # the default tiny model, 2 CPU processes (gloo)
    python tools/bench_fsdp_gather.py --hidden 512 --layers 4 --ffn 1536 --steps 6
    python tools/bench_fsdp_gather.py --int-matmul auto,off    # the integer and the fake-quant forward

Starts itself under torchrun with --procs processes. The three modes (strategy.gather=latent, codes,
packed) train the same BitNet b1.58 model (conf/model/tiny.yaml's decoder at the given shape, the
default quantization; `--int-matmul off` for the fake-quant forward, `auto,off` both) from the same
weights on the same batches. All the models are built first and trained in rounds of one step each, the order rotated
every round, so that each mode meets the same moments of the machine. Every all-gather FSDP2 issues
(`dist.all_gather_single`: each decoder layer's parameters in forward and again in backward, the root's
embedding and norms) is counted in bytes on rank 0. Printed per mode: bytes all-gathered per step, the
ratio to the latent gather, the losses, the median wall time per step and the median (p25-p75) of its
ratio to the first row's step of the same round (gloo on CPU: not a GPU figure). Results:
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("latent", "codes", "packed")


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tools"))
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from bitnet_train.config import ModelConfig, QuantConfig
    from bitnet_train.models.decoder import CausalLM
    from bitnet_train.parallel.fsdp2 import shard_decoder
    from bitnet_train.quant.convert import quantize_model
    from bench_qat_interleaved import quantiles

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    counted = {"bytes": 0}
    gather = dist.all_gather_single

    def counting(output_tensor, input_tensor, *a, **k):
        counted["bytes"] += output_tensor.numel() * output_tensor.element_size()
        return gather(output_tensor, input_tensor, *a, **k)

    dist.all_gather_single = counting
    cfg = ModelConfig(vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads)
    g = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, 4096, (args.batch, args.seq + 1), generator=g) for _ in range(args.steps + 1)]
    forwards = args.int_matmul.split(",")
    variants = [(mode, fwd) for fwd in forwards for mode in MODES]
    names = {v: v[0] if len(forwards) == 1 else f"{v[0]}, int_matmul={v[1]}" for v in variants}
    models = {}
    for mode, fwd in variants:  # all built first, then stepped in turns: the same moments of the machine for each
        torch.manual_seed(0)
        model = CausalLM(cfg)
        quantize_model(model, QuantConfig(int_matmul=fwd))
        shard_decoder(model, mesh, gather=mode)
        models[mode, fwd] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    gathered = {v: [] for v in variants}
    seconds = {v: [] for v in variants}
    losses = {v: [] for v in variants}
    for i, batch in enumerate(batches):
        shift = i % len(variants)
        for v in variants[shift:] + variants[:shift]:  # the order rotates every round
            model, opt = models[v]
            dist.barrier()
            counted["bytes"] = 0
            started = time.perf_counter()
            logits = model(batch[:, :-1])
            loss_t = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            loss_t.backward()
            opt.step()
            opt.zero_grad()
            if i:  # the first round is warmup
                seconds[v].append(time.perf_counter() - started)
                gathered[v].append(counted["bytes"])
            losses[v].append(loss_t.item())
    if rank == 0:
        first = variants[0]
        base = sum(gathered[first]) / args.steps
        print(f"model: hidden {args.hidden}, {args.layers} layers, FFN {args.ffn}; {world} processes, batch "
              f"{args.batch} x {args.seq} per process; {args.steps} rounds; times against {names[first]}")
        print("| gather | all-gathered per step (rank 0) | ratio | losses (rank 0's batches) | s/step (gloo, CPU) "
              f"| x {names[first]} (p25-p75) |")
        print("|---|---|---|---|---|---|")
        for v in variants:
            b = sum(gathered[v]) / args.steps
            q25, q50, q75 = quantiles([t / t0 for t, t0 in zip(seconds[v], seconds[first])])
            print(f"| {names[v]} | {b / 2**20:.2f} MiB | {b / base:.3f} | {', '.join(f'{x:.6f}' for x in losses[v])} | "
                  f"{statistics.median(seconds[v]):.3f} | {q50:.3f} ({q25:.3f}-{q75:.3f}) |")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="measured rounds (one step of each gather) after one warmup round")
    p.add_argument("--int-matmul", default="auto", choices=("auto", "off", "auto,off", "off,auto"),
                   help="quant.int_matmul: the integer forward (auto), the fake-quant one (off), or both")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
           __file__, "--worker", *sys.argv[1:]]
    raise SystemExit(subprocess.run(cmd, env=env).returncode)


if __name__ == "__main__":
    main()
