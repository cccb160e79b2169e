"""Whole parameters outside the forward pass, whatever the sharding.

Inside forward, FSDP2 and ZeRO-3 hand each module its gathered parameters. Outside it (statistics
callbacks, export) a parameter is a shard: a DTensor under FSDP2, an empty placeholder with
`ds_shape` under ZeRO-3. `gathered(params)` yields the full tensors on every rank; it is a
collective, so every rank must call it with the same parameters.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") and hasattr(param, "ds_shape")


@contextmanager
def gathered(params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Full (unsharded) versions of `params`, read-only, valid inside the `with` block."""
    params = list(params)
    zero3 = [p for p in params if is_zero3_partitioned(p)]
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(zero3, modifier_rank=None):
            yield [_full(p) for p in params]
    else:
        yield [_full(p) for p in params]


def _full(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return param.detach().full_tensor()
    return param.detach()
