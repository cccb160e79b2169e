"""Worker for test_sharded_bitlinear.py, started by torchrun on 2 CPU processes (gloo).

One BitLinear (37 x 64: shards of uneven size) is run whole in every process (the reference), then
sharded by FSDP2 (fully_shard) and by DeepSpeed ZeRO-3. Every call of the quantizer is recorded:
the weight shape it saw and its gamma. Results go to OUT/rank{R}.json for the test to check.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

import bitnet_train.quant.bitlinear as bitlinear_module
import bitnet_train.quant.int_forward as int_forward_module
from bitnet_train.parallel.gather import gathered
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.functional import quantize_weight, weight_scale
from worker_exit import end_worker

SEEN: list[dict] = []


def recording_quantize_weight(w, method="absmean", lam=1.0):
    SEEN.append({"shape": list(w.shape), "gamma": float(weight_scale(w, method))})
    return quantize_weight(w, method, lam)


_codes = int_forward_module.ternary_weight_codes


def recording_weight_codes(w, method="absmean", fused=False):
    """The integer forward's weight quantizer (quant.int_matmul=auto), recorded the same way."""
    SEEN.append({"shape": list(w.shape), "gamma": float(weight_scale(w, method))})
    return _codes(w, method, fused)


def reference_layer() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    layer = BitLinear(64, 37, bias=True, input_norm=True)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.02)
        layer.weight[:5] *= 8.0  # rows of rank 0's shard much larger: shard scales differ from the whole's
    return nn.Sequential(layer), torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))


def run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    SEEN.clear()
    y = model(x)
    y.square().sum().backward()
    return y.detach(), SEEN[-1]


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    bitlinear_module.quantize_weight = recording_quantize_weight
    bitlinear_module.ternary_weight_codes = int_forward_module.ternary_weight_codes = recording_weight_codes
    result: dict = {}

    ref_model, x = reference_layer()
    y_ref, seen_ref = run(ref_model, x)
    full_w = ref_model[0].weight.detach().clone()
    result["reference"] = {"seen": seen_ref, "gamma_full": float(weight_scale(full_w))}
    result["shard_gammas"] = [float(weight_scale(part)) for part in full_w.chunk(2, dim=0)]

    # FSDP2: per-parameter sharding along dim 0
    from torch.distributed.fsdp import fully_shard

    model = copy.deepcopy(ref_model)
    fully_shard(model[0])
    fully_shard(model)
    local_rows = model[0].weight.to_local().shape[0]
    y, seen = run(model, x)
    grad = model[0].weight.grad.full_tensor()
    outside = model[0].quantized_weight()  # outside forward: a DTensor, gathered before the scale
    result["fsdp2"] = {"seen": seen, "local_rows": local_rows,
                       "max_abs_diff": float((y - y_ref).abs().max()),
                       "grad_max_abs_diff": float((grad - ref_model[0].weight.grad).abs().max()),
                       "outside_forward_equal": bool(torch.equal(outside.detach(), ref_model[0].quantized_weight().detach()))}

    # DeepSpeed ZeRO-3: flat partitions, gathered by a pre-forward hook (persistence threshold 0: by
    # default DeepSpeed keeps parameters under 1e5 elements whole on every rank)
    import deepspeed

    from bitnet_train.parallel.deepspeed import _skip_shm_op_build

    _skip_shm_op_build()
    deepspeed.init_distributed(dist_backend="gloo")
    model = copy.deepcopy(ref_model)
    model[0].weight.grad = None
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        config={"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "zero_allow_untested_optimizer": True})
    layer = engine.module[0]
    y, seen = run(engine, x)
    placeholder = list(layer.weight.shape)
    try:
        layer.quantized_weight()
        refused = ""
    except RuntimeError as err:
        refused = str(err)
    with gathered([layer.weight]) as (whole,):
        gathered_equal = bool(torch.equal(whole, full_w))
    result["zero3"] = {"seen": seen, "placeholder_shape": placeholder, "refused": refused,
                       "gathered_equal": gathered_equal, "max_abs_diff": float((y - y_ref).abs().max())}

    (out / f"rank{rank}.json").write_text(json.dumps(result))
    end_worker()  # see worker_exit.py: exits before a gloo thread can abort the interpreter's teardown


if __name__ == "__main__":
    main(Path(sys.argv[1]))
