"""Activation codes computed once for every integer-forward layer that reads the same tensor.

In a decoder, q_proj, k_proj and v_proj read one activation (the attention's input norm), and so do
gate_proj and up_proj. Their b1.58 quantizer is the same per-token int8 absmax, so the codes, the
scales s (and, where the CPU code product multiplies fp32 codes, those) are the same for all readers:
`activation_codes` computes them for the first reader and hands the same tensors to the
readers that follow while `x` is the same, unmodified tensor (its identity and version counter).
Backward mirrors it: the straight-through x_q = codes / s that each reader's weight gradient
multiplies is rebuilt once (`Readers.dequantized`) and dropped after the last reader has used it.

Nothing changes numerically: the readers get the tensors they would have computed themselves
(tests/unit/quant/test_shared_codes.py). Under torch.compile nothing is shared here: the model's
graph computes the codes once per reader and Inductor's common-subexpression elimination merges them.

Inference tensors (torch.inference_mode) have no version counter, so an in-place change could not be
told: each reader computes its own codes there, as it does inside a torch.compile trace.

Lifetime: the last input's entry is held through a weak reference to the input, so it goes when
that tensor goes, and is replaced by the next input; backward's x_q lives from the first reader's
backward to the last's.
"""

from __future__ import annotations

import weakref

import torch

from bitnet_train.quant import fused_kernels as fk


class Readers:
    """The layers that read one activation's codes in forward; backward dequantizes the codes once for them."""

    def __init__(self) -> None:
        self.count = 0
        self._x_q: torch.Tensor | None = None

    def dequantized(self, codes: torch.Tensor, s: torch.Tensor, dtype: torch.dtype, fused: bool,
                    needed: bool = True) -> torch.Tensor | None:
        """x_q = codes / s in `dtype` for one reader's backward (None where it is not `needed`): computed
        by the first reader, kept for the others, released by the last."""
        x_q = self._x_q
        if needed and (x_q is None or x_q.dtype != dtype):
            x_q = fk.run(fk.dequantize, fused, codes.numel(), codes, s, dtype)
        self.count -= 1
        self._x_q = x_q if self.count > 0 else None
        return x_q if needed else None


class _Entry:
    __slots__ = ("ref", "key", "codes", "readers")

    def __init__(self, x: torch.Tensor, key: tuple, codes: tuple, readers: Readers) -> None:
        self.ref = weakref.ref(x, _forget)
        self.key, self.codes, self.readers = key, codes, readers


_LAST: list[_Entry | None] = [None]


def _forget(ref: weakref.ref) -> None:
    entry = _LAST[0]
    if entry is not None and entry.ref is ref:
        _LAST[0] = None


def activation_codes(x: torch.Tensor, x2: torch.Tensor, want_float: bool, fused: bool,
                     share: bool = True) -> tuple[tuple, Readers | None]:
    """((int8 codes, s, fp32 codes or None) of `x2` = x viewed as [tokens, K], the Readers they belong to,
    or None where nothing is shared): fk.activation_codes of x2, or the ones the previous reader of the
    same `x` got. `share=False` computes them for this reader alone (comparisons)."""
    # no Readers inside a trace (a traced function may not mutate an outside object), nor for inference
    # tensors (no version counter to tell an in-place change)
    if not share or torch.compiler.is_compiling() or x.is_inference():
        return fk.run(fk.activation_codes, fused, x2.numel(), x2.float(), want_float), None
    key = (x._version, x.shape, want_float)
    entry = _LAST[0]
    if entry is None or entry.ref() is not x or entry.key != key:
        codes = fk.run(fk.activation_codes, fused, x2.numel(), x2.float(), want_float)
        entry = _LAST[0] = _Entry(x, key, codes, Readers())
    entry.readers.count += 1
    return entry.codes, entry.readers


def dequantized(readers: Readers | None, codes: torch.Tensor, s: torch.Tensor, dtype: torch.dtype, fused: bool,
                needed: bool) -> torch.Tensor | None:
    """One reader's x_q (None where not `needed`): `readers.dequantized`, or computed here without Readers."""
    if readers is not None:
        return readers.dequantized(codes, s, dtype, fused, needed)
    return fk.run(fk.dequantize, fused, codes.numel(), codes, s, dtype) if needed else None


def reset() -> None:
    """Forget the last input's codes (tests)."""
    _LAST[0] = None
