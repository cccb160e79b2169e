"""Worker for test_ternary_gather.py, started by torchrun on 2 CPU processes (gloo).

A two-BitLinear model (the first 37 x 64: shards of uneven size, rows of one shard 8x larger, so a
scale taken on a shard could not pass) runs whole in every process (the reference), then under
FSDP2 with the latent weights gathered (today's path), with int8 ternary codes gathered and with
those codes packed 2 bits each (parallel/ternary_gather.py): the first forward, its input gradient and weight gradients, the losses
of 3 AdamW steps, the final weights, the weights the forward multiplied, the bytes all-gathered, and
the state dict's tensor types. Then the same with the integer forward (int_matmul auto): one process,
and FSDP2 with each gather, counting the integer-forward calls. Results go to OUT/rank{R}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import bitnet_train.quant.bitlinear as bitlinear_module
from bitnet_train.parallel import ternary_gather
from bitnet_train.quant.bitlinear import BitLinear
from worker_exit import end_worker

SEEN: list[torch.Tensor] = []
_linear = bitlinear_module.F.linear
INT_CALLS = {"int_bitlinear": 0, "norm_int_bitlinear": 0}


def build(int_matmul: str = "off") -> nn.Sequential:
    """int_matmul off: the fake-quant forward, whose F.linear call shows the weight each path hands the layer;
    auto: the integer forward (the first layer with its input norm fused in)."""
    torch.manual_seed(0)
    model = nn.Sequential(BitLinear(64, 37, input_norm=True, int_matmul=int_matmul), nn.GELU(),
                          BitLinear(37, 64, bias=True, int_matmul=int_matmul))
    with torch.no_grad():
        model[0].weight[:5] *= 8.0
    return model


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(4, 7, 64, generator=g) for _ in range(n)]


def run(model: nn.Module, steps: int = 3) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out: dict = {"losses": []}
    for i, x in enumerate(batches(steps)):
        x = x.requires_grad_(True)
        SEEN.clear()
        y = model(x)
        if i == 0 and SEEN:  # the first layer's weight as the fake-quant forward multiplied it
            out["w_seen"] = SEEN[0]
        loss = y.square().mean()
        loss.backward()
        if i == 0:
            out["y"], out["x_grad"] = y.detach(), x.grad.detach()
            out["w_grad"] = [_full(m.weight.grad) for m in (model[0], model[2])]
        opt.step()
        opt.zero_grad()
        out["losses"].append(loss.item())
    out["weights"] = [_full(m.weight) for m in (model[0], model[2])]
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def recording_linear(x, w, b=None):
    SEEN.append(w.detach().clone())  # a copy: FSDP2 frees the gathered weight after the layer's forward
    return _linear(x, w, b)


def counting(name: str):
    inner = getattr(bitlinear_module, name)

    def call(*args, **kwargs):
        INT_CALLS[name] += 1
        return inner(*args, **kwargs)
    return call


def sharded(model: nn.Sequential, mesh, mode: str) -> tuple[nn.Sequential, list[str]]:
    wrapped = ternary_gather.wrap_for_code_gather(model, packed=mode == "packed") if mode != "latent" else []
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, wrapped


def compare(got: dict, ref: dict) -> dict:
    return {"losses": got["losses"], "y": float((got["y"] - ref["y"]).abs().max()),
            "x_grad": float((got["x_grad"] - ref["x_grad"]).abs().max()),
            "w_grad": max(float((a - b).abs().max()) for a, b in zip(got["w_grad"], ref["w_grad"])),
            "weights": max(float((a - b).abs().max()) for a, b in zip(got["weights"], ref["weights"]))}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    bitlinear_module.F.linear = recording_linear
    ref = run(build())
    result: dict = {"reference_losses": ref["losses"]}
    for mode in ("latent", "codes", "packed"):
        model, wrapped = sharded(build(), mesh, mode)
        ternary_gather.GATHER_BYTES.update(codes=0, latent=0)
        got = run(model)
        state = model.state_dict()
        result[mode] = {
            "wrapped": wrapped, "bytes": dict(ternary_gather.GATHER_BYTES),
            "losses_hex": [v.hex() for v in got["losses"]],
            "weights_bits": [w.view(torch.int32).tolist() for w in got["weights"]],
            "w_seen": float((got["w_seen"] - ref["w_seen"]).abs().max()),
            "w_seen_ternary": sorted({round(v, 6) for v in (got["w_seen"] / got["w_seen"].abs().max()).unique().tolist()}),
            "state_types": sorted({type(v.to_local() if hasattr(v, "to_local") else v).__name__ for v in state.values()}),
            "local_type": type(model[0].weight.to_local()).__name__,
        } | compare(got, ref)
    # the integer forward (int_matmul auto): one process, then FSDP2 with each gather; which functions ran
    bitlinear_module.int_bitlinear = counting("int_bitlinear")
    bitlinear_module.norm_int_bitlinear = counting("norm_int_bitlinear")
    int_ref = run(build("auto"))
    result["int_reference"] = {"losses": int_ref["losses"], "fake_quant": compare(int_ref, ref)}
    for mode in ("latent", "codes", "packed"):
        model, _ = sharded(build("auto"), mesh, mode)
        INT_CALLS.update(int_bitlinear=0, norm_int_bitlinear=0)
        SEEN.clear()
        got = run(model)
        result[f"int_{mode}"] = compare(got, int_ref) | {"calls": dict(INT_CALLS), "fake_quant_calls": len(SEEN)}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    end_worker()  # see worker_exit.py: exits before a gloo thread can abort the interpreter's teardown


if __name__ == "__main__":
    main(Path(sys.argv[1]))
