"""Names of the per-token activation quantization schemes, shared by training, export and the runtime.

A scheme is what one projection does to its input before the ternary matmul (quant/functional.py
computes each; the native export records the name per projection and the runtime runs the same one):

  int8_absmax        BitNet b1.58, every projection; BitNet a4.8 input of down_proj.
  int4_absmean       BitNet a4.8 inputs of q/k/v and gate/up; BitNet v2 (a4) every projection.
  int8_absmax_topNN  BitNet a4.8 input of o_proj (NN = 50): keep the NN% largest magnitudes of each
                     token (Q-Sparse top-K), zero the rest, then int8_absmax. NN is an integer 1..99.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

INT8_ABSMAX = "int8_absmax"
INT4_ABSMEAN = "int4_absmean"
_TOPK = re.compile(r"^int8_absmax_top(\d{1,2})$")
KNOWN = "int8_absmax, int4_absmean, int8_absmax_topNN (NN = 1..99, e.g. int8_absmax_top50)"


@dataclass(frozen=True)
class ActivationScheme:
    name: str
    bits: int
    """8 (absmax) or 4 (absmean)."""
    topk_percent: int | None = None
    """Share of each token's entries kept before quantization (top-K by magnitude), or None for all."""

    @property
    def absmean(self) -> bool:
        return self.bits == 4


@lru_cache(maxsize=None)
def parse_scheme(name: str) -> ActivationScheme:
    """The scheme called `name`; ValueError for a name no quantizer implements."""
    if name == INT8_ABSMAX:
        return ActivationScheme(name, 8)
    if name == INT4_ABSMEAN:
        return ActivationScheme(name, 4)
    match = _TOPK.match(name) if isinstance(name, str) else None
    if match is not None and 0 < int(match.group(1)) < 100:
        return ActivationScheme(name, 8, int(match.group(1)))
    raise ValueError(f"unknown activation scheme {name!r}; known: {KNOWN}")


def is_known_scheme(name: str) -> bool:
    try:
        parse_scheme(name)
    except (ValueError, TypeError):
        return False
    return True

