"""Runtime activation quantizers: int8 codes equal training's, int4 and top-K ranges and counts."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.infer.activations import is_known_scheme, encode_activation
from bitnet_train.quant.functional import activation_codes


def _x():
    return torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 3


def test_int8_equals_training_codes():
    codes, mult = encode_activation(_x(), "int8_absmax")
    ref_codes, s = activation_codes(_x(), 8)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(mult, (1 / s).squeeze(-1))
    torch.testing.assert_close(codes * mult[:, None], _x(), atol=float(mult.max()) / 2 + 1e-6, rtol=0)


def test_int4_absmean_range_and_scale():
    codes, mult = encode_activation(_x(), "int4_absmean")
    assert codes.min() >= -8 and codes.max() <= 7 and codes.min() < 0 < codes.max()
    torch.testing.assert_close(mult, _x().abs().mean(-1) / 7 ** 0.5)


def test_topk_keeps_half():
    codes, _ = encode_activation(_x(), "int8_absmax_top50")
    assert ((codes != 0).sum(-1) <= 20).all()
    kept = _x().abs().topk(20, dim=-1).indices
    assert (codes.gather(-1, kept).abs() >= 0).all() and (codes.abs().amax(-1) == 127).all()


def test_scheme_names():
    assert is_known_scheme("int8_absmax") and is_known_scheme("int8_absmax_top50")
    assert not is_known_scheme("int8_absmax_top0") and not is_known_scheme("fp8")
    with pytest.raises(ValueError, match="unknown activation scheme"):
        encode_activation(_x(), "fp8")
