"""Bytes FSDP2 all-gathers per training step: latent fp32 weights, int8 ternary codes, 2-bit packed codes.

    python tools/bench_fsdp_gather.py                       # the default tiny model, 2 CPU processes (gloo)
    python tools/bench_fsdp_gather.py --hidden 512 --layers 4 --ffn 1536 --steps 3

Starts itself under torchrun with --procs processes. The three modes (strategy.gather=latent, codes,
packed) train the same BitNet b1.58 model (conf/model/tiny.yaml's decoder at the given shape, the
default quantization) from the same weights on the same batches; every all-gather FSDP2 issues (`dist.all_gather_single`: each decoder layer's
parameters in forward and again in backward, the root's embedding and norms) is counted in bytes on
rank 0. Printed per mode: bytes all-gathered per step, the ratio to the latent gather, the
losses, and wall time per step (gloo on CPU: not a GPU figure). Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from bitnet_train.config import ModelConfig, QuantConfig
    from bitnet_train.models.decoder import CausalLM
    from bitnet_train.parallel.fsdp2 import shard_decoder
    from bitnet_train.quant.convert import quantize_model

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
    rows = []
    for mode in ("latent", "codes", "packed"):
        torch.manual_seed(0)
        model = CausalLM(cfg)
        quantize_model(model, QuantConfig())
        shard_decoder(model, mesh, gather=mode)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        per_step, seconds, losses = [], 0.0, []
        for i, batch in enumerate(batches):
            counted["bytes"] = 0
            started = time.perf_counter()
            logits = model(batch[:, :-1])
            loss_t = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            loss_t.backward()
            opt.step()
            opt.zero_grad()
            if i:  # the first step is warmup
                seconds += time.perf_counter() - started
                per_step.append(counted["bytes"])
            losses.append(loss_t.item())
        rows.append((mode, sum(per_step) / len(per_step), losses, seconds / args.steps))
    if rank == 0:
        base = rows[0][1]
        print(f"model: hidden {args.hidden}, {args.layers} layers, FFN {args.ffn}; {world} processes, batch "
              f"{args.batch} x {args.seq} per process")
        print("| gather | all-gathered per step (rank 0) | ratio | losses (rank 0's batches) | s/step (gloo, CPU) |")
        print("|---|---|---|---|---|")
        for mode, b, losses, s in rows:
            print(f"| {mode} | {b / 2**20:.2f} MiB | {b / base:.3f} | {', '.join(f'{v:.6f}' for v in losses)} | "
                  f"{s:.3f} |")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="measured steps after one warmup step")
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
