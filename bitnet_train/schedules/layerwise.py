"""Layer-wise quantization plans: which group each quantized linear belongs to (docs/METHODS.md#layer-wise-plans).

"An Extra RMSNorm is All You Need" (arXiv 2505.08823) quantizes a pretrained model gradually,
layer by layer; the order and spacing are not fixed by the paper, so every choice is a setting.
A plan sorts the quantized linears into groups 0, 1, 2, ...; group g starts its ramps
`g * offset` steps after the transition (schedules/phase_in.py).

  all        one group: every layer ramps together
  bottom_up  one group per decoder layer, layer 0 first (linears outside the decoder layers,
             e.g. a quantized lm_head, sit on top: last)
  top_down   the same groups, last layer first (a quantized lm_head first)
  explicit   groups of fnmatch patterns over qualified names (or leaf names), first group first;
             a linear matching no group is an error, a linear matching several joins the first
  by_type    the same with patterns over projection (leaf) names only; by default
             [q_proj, k_proj, v_proj], [o_proj], [gate_proj, up_proj], [down_proj]
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from bitnet_train.config import ConfigError, LayerPlanConfig

BY_TYPE_DEFAULT = [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """Decoder layer number in a qualified name (model.layers.3.mlp.up_proj -> 3), None outside the layers."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def layer_groups(names: list[str], cfg: LayerPlanConfig) -> dict[str, int]:
    """Group number (0 = first to ramp) of each quantized linear, by qualified name."""
    if cfg.plan == "all":
        return {name: 0 for name in names}
    if cfg.plan in ("bottom_up", "top_down"):
        indices = [layer_index(name) for name in names]
        top = max((i for i in indices if i is not None), default=-1) + 1  # outside the layers: on top
        position = {name: (top if i is None else i) for name, i in zip(names, indices)}
        ranks = sorted(set(position.values()), reverse=cfg.plan == "top_down")
        rank_of = {p: r for r, p in enumerate(ranks)}
        return {name: rank_of[position[name]] for name in names}
    groups = cfg.order or BY_TYPE_DEFAULT
    leaf_only = cfg.plan == "by_type"
    out: dict[str, int] = {}
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        for g, patterns in enumerate(groups):
            if any(fnmatchcase(leaf, p) or (not leaf_only and fnmatchcase(name, p)) for p in patterns):
                out[name] = g
                break
        else:
            raise ConfigError(
                f"schedule.layers.order {groups} matches no group for the quantized linear {name!r}; "
                "add a pattern for it (a last group '*' catches the rest)")
    return out
