"""FSDP2 all-gathers a BitLinear's ternary codes instead of its fp32 latent weight (`strategy.gather=codes`).

What it computes. In quantization-aware training at full strength (weight lambda 1, absmean scale) the
forward only ever uses Q_w(W) = codes / inv, codes = clamp(round(W * inv), -1, 1), inv = 1 / mean|W|
(docs/METHODS.md#bitlinear-b158). So before FSDP2's all-gather each rank computes, on
its own shard, the int8 codes at the scale of the *whole* matrix (the shards' sums of |W| are
all-reduced first: one scalar per matrix), and the gather moves 1 byte per weight instead of 4.
After the gather the unsharded parameter is the dequantized Q_w(W), in the parameter dtype, with the
fake-quant path's arithmetic (codes divided by inv in fp32); BitLinear multiplies it as it is
(`weight_gathered_quantized`). Its gradient is the gradient with respect to Q_w(W), which is exactly
the straight-through gradient of the latent weight, and FSDP2 reduce-scatters it onto the fp32 shard
as before; the optimizer still updates the latent weight.

How. FSDP2's all-gather extension (torch.distributed.fsdp: `fsdp_pre_all_gather` /
`fsdp_post_all_gather` on the sharded parameter's local tensor): the latent weight is wrapped, before
`fully_shard`, in `TernaryGatherWeight`, a tensor subclass that behaves as its fp32 data for every
operation (optimizer, clipping, checkpoints see plain tensors) and only adds the two hooks. This is
the scheme torchao's BitNet training uses for its FSDP2 all-gather; the scale's all-reduce is the one
float8 training does for its amax.

Limits: only layers at weight lambda 1 with the absmean scale when sharding starts are wrapped (a
median has no all-reduce; phase-in needs the latent weight: layers still phasing in gather fp32 as
before), and lowering a wrapped layer's lambda afterwards raises (BitLinear.set_lambda). Equality with
the latent gather: the scale's sum is taken in another order (up to 1 ulp apart), so results agree to
fp32 tolerance rather than bit for bit (tests/integration/test_ternary_gather.py; the whole-run check
is the `fsdp2_codes` case of tests/integration/test_distributed.py). The bytes are int8 codes, 1/4 of
fp32 (`strategy.gather=codes`), or the same codes packed 2 bits per weight, 1/16 of fp32
(`strategy.gather=packed`, `PackedTernaryGatherWeight`): code + 1 in {0, 1, 2}, four to a byte, the
first in the low bits, each rank's shard padded to a whole byte. Unpacking gives back the int8 codes
exactly, so the packed gather computes what the int8 one computes, bit for bit. A weight whose rows do
not split evenly over the ranks still travels as int8 codes: FSDP2's extension requires the all-gather
input of a rank with a padded shard to have that shard's [rows, cols] shape.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils._pytree import tree_map_only

from bitnet_train.quant.functional import SCALE_EPS

aten = torch.ops.aten
# operations whose results stay wrapped (FSDP2 makes the shard with them); every other result is a plain tensor
_PRESERVE = {aten.detach.default, aten.view.default, aten.as_strided.default, aten.slice.Tensor, aten.split.Tensor,
             aten.split_with_sizes.default, aten.chunk.default, aten.new_zeros.default, aten.empty_like.default,
             aten.clone.default, aten._to_copy.default, aten.copy_.default, aten.alias.default}
GATHER_MODES = ("latent", "codes", "packed")


class TernaryGatherWeight(torch.Tensor):
    """A latent BitLinear weight whose FSDP2 all-gather carries int8 ternary codes and one scale."""

    _data: torch.Tensor
    latent_for_code_gather = True
    """Marks the latent weight itself (one process, or outside FSDP2's forward): BitLinear quantizes it as usual."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=data.dtype,
                                                   device=data.device, requires_grad=data.requires_grad)

    def __init__(self, data: torch.Tensor) -> None:
        self._data = data

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"TernaryGatherWeight({self._data!r})"

    def __tensor_flatten__(self):
        return ["_data"], None

    @staticmethod
    def __tensor_unflatten__(inner, metadata, outer_size, outer_stride):
        return TernaryGatherWeight(inner["_data"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        out = func(*tree_map_only(cls, lambda t: t._data, args), **tree_map_only(cls, lambda t: t._data, kwargs or {}))
        if func in _PRESERVE:
            return tree_map_only(torch.Tensor, lambda t: t if isinstance(t, cls) else cls(t), out)
        return out

    # FSDP2's all-gather extension ------------------------------------------------------------------
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        local = self._data.detach().float()
        total = local.abs().sum()
        if mesh.size() > 1:
            dist.all_reduce(total, group=mesh.get_group())
        inv = 1.0 / (total / math.prod(outer_size)).clamp(min=SCALE_EPS)
        codes = (local * inv).round_().clamp_(-1, 1).to(torch.int8)
        rows = -(-outer_size[0] // mesh.size())  # FSDP2 gathers shards padded to equal rows
        if codes.shape[0] < rows:
            codes = torch.cat([codes, codes.new_zeros(rows - codes.shape[0], *codes.shape[1:])])
        # FSDP2 requires a padded shard's all-gather input to have the padded shard's shape: a weight whose rows
        # do not split evenly over the ranks travels as int8 codes whatever the wrapper
        wire = self._to_wire(codes) if outer_size[0] % mesh.size() == 0 else codes
        GATHER_BYTES["codes"] += wire.numel() * wire.element_size() * mesh.size()
        GATHER_BYTES["latent"] += rows * math.prod(outer_size[1:]) * mesh.size() * self._data.element_size()
        return (wire,), (inv, codes.shape)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        (wire,), (inv, shard_shape) = all_gather_outputs, metadata
        codes = self._from_wire(wire, shard_shape) if wire.dtype != torch.int8 else wire
        weight = codes.float().div_(inv).to(param_dtype)
        if out is not None:
            # the re-gather for backward (reshard_after_forward) refills the parameter's storage with the
            # same values forward used: as FSDP2's own gather does, without bumping autograd's version
            with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(out):
                out.copy_(weight[: out.shape[0]])
            return None
        return weight, (weight,)

    @staticmethod
    def _to_wire(codes: torch.Tensor) -> torch.Tensor:
        """What this rank's padded shard of int8 codes [rows, cols] travels as: the codes themselves."""
        return codes

    @staticmethod
    def _from_wire(gathered: torch.Tensor, shard_shape: torch.Size) -> torch.Tensor:
        """The int8 codes [world * rows, cols] of the ranks' gathered `_to_wire` outputs, in rank order."""
        return gathered


class PackedTernaryGatherWeight(TernaryGatherWeight):
    """A `TernaryGatherWeight` whose codes travel packed 2 bits per weight (`strategy.gather=packed`)."""

    def __repr__(self) -> str:
        return f"PackedTernaryGatherWeight({self._data!r})"

    @staticmethod
    def __tensor_unflatten__(inner, metadata, outer_size, outer_stride):
        return PackedTernaryGatherWeight(inner["_data"])

    @staticmethod
    def _to_wire(codes: torch.Tensor) -> torch.Tensor:
        return pack_ternary(codes)

    @staticmethod
    def _from_wire(gathered: torch.Tensor, shard_shape: torch.Size) -> torch.Tensor:
        rows, cols = shard_shape[0], math.prod(shard_shape[1:])
        per_rank = gathered.view(-1, -(-rows * cols // 4))  # [world, bytes of one shard]
        return unpack_ternary(per_rank, rows * cols).reshape(-1, *shard_shape[1:])


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [ceil(n / 4)] of n ternary codes in {-1, 0, 1} (any shape, read in row-major order): byte j
    holds codes 4j..4j+3 as (code + 1) << 0, 2, 4, 6; a last partial byte is padded with code 0."""
    u = (codes.reshape(-1) + 1).to(torch.uint8)
    if u.numel() % 4:
        u = torch.cat([u, u.new_ones(4 - u.numel() % 4)])
    u = u.view(-1, 4)
    return u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """int8 codes [..., n] of `pack_ternary` outputs [..., ceil(n / 4)] (the inverse, row by row)."""
    fields = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=-1)
    return (fields.reshape(*packed.shape[:-1], -1)[..., :n].to(torch.int8) - 1)


GATHER_BYTES = {"codes": 0, "latent": 0}
"""Bytes this process's all-gathers of wrapped weights received (`codes`: int8 or packed codes) and what
the fp32 latent weights would have made them (`latent`), accumulated since import; read by the bytes
test and tools."""


def wrap_for_code_gather(model: nn.Module, packed: bool = False) -> list[str]:
    """Wrap the weight of every BitLinear of `model` that can gather codes (lambda 1, absmean); their names.
    `packed`: the codes travel 2 bits per weight (`PackedTernaryGatherWeight`) instead of one int8 each."""
    wrapper = PackedTernaryGatherWeight if packed else TernaryGatherWeight
    wrapped = []
    for name, module in model.named_modules():
        if not hasattr(module, "weight_gathered_quantized"):
            continue
        if module.weight_lambda != 1 or module.weight_scale != "absmean" or module.weight.dim() != 2:
            continue
        weight = module.weight
        module.weight = nn.Parameter(wrapper(weight.data), requires_grad=weight.requires_grad)
        module.weight_gathered_quantized = True
        module._register_state_dict_hook(_plain_state)
        wrapped.append(name)
    return wrapped


def _plain_state(module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
    """state_dict() holds the weight's plain fp32 data (sharing storage, so loading into it loads the
    parameter): checkpoints never contain the wrapper class."""
    from torch.distributed.tensor import DTensor

    key = prefix + "weight"
    value = state.get(key)
    if isinstance(value, DTensor) and isinstance(value._local_tensor, TernaryGatherWeight):
        state[key] = DTensor.from_local(value._local_tensor._data, device_mesh=value.device_mesh,
                                        placements=value.placements, run_check=False, shape=value.shape,
                                        stride=value.stride())
    elif isinstance(value, TernaryGatherWeight):
        state[key] = value._data
