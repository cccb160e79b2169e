"""Copy existing 16-bit weights (our parameter names) into a decoder, around the quantization swap.

`tasks/init_source.py` reads `init_from` (one of our checkpoints or a transformers folder) into an
InitSource; this module puts its weights into the model. Loading is split around the quantization swap
(quant/convert.py), so that it happens before quantization: `load_base` copies every weight of the plain
decoder, strictly by name and shape; after the swap, `load_norms` copies input norms the source already
has (BitNet's attn_sub_norm / ffn_sub_norm, or the norms of a quantized checkpoint) and leaves the new
ones at 1, as in the "Extra RMSNorm" recipe and BitDistill.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from bitnet_train.config import ConfigError

log = logging.getLogger(__name__)
NORM_SUFFIX = ".input_norm.weight"


def _tied(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def load_base(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy every weight of the plain (not yet quantized) decoder from `state`; return the input norms left over."""
    ours = model.state_dict()
    state = dict(state)
    if _tied(model):
        state.pop("lm_head.weight", None)
    pending = {k: v for k, v in state.items() if k.endswith(NORM_SUFFIX)}
    rest = {k: v for k, v in state.items() if k not in pending}
    missing = sorted(k for k in ours if k not in rest and not (k == "lm_head.weight" and _tied(model)))
    unexpected = sorted(k for k in rest if k not in ours)
    if missing or unexpected:
        raise ConfigError(
            f"init_from weights do not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    with torch.no_grad():
        for key, tensor in rest.items():
            if tuple(tensor.shape) != tuple(ours[key].shape):
                raise ConfigError(f"init_from {key} has shape {tuple(tensor.shape)}, the model {tuple(ours[key].shape)}")
            ours[key].copy_(tensor.to(ours[key].dtype))
    return pending


def load_norms(model: nn.Module, pending: dict[str, torch.Tensor]) -> list[str]:
    """After quantization: copy the source's input norms; return the names of the new ones (left at 1)."""
    ours = {k: v for k, v in model.state_dict().items() if k.endswith(NORM_SUFFIX)}
    unknown = sorted(k for k in pending if k not in ours)
    if unknown:
        raise ConfigError(
            f"init_from has input norms the configured quantization does not place ({unknown[0]}, {len(unknown)} "
            "in all); choose the matching quant.norm (subln for BitNet sub-norms, all_linear for norms on every linear)")
    with torch.no_grad():
        for key, tensor in pending.items():
            ours[key].copy_(tensor.to(ours[key].dtype))
    new = sorted(k for k in ours if k not in pending)
    if new:
        log.info("init_from: %d new input norms start at 1 (e.g. %s)", len(new), new[0])
    return new
