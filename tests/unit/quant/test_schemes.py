"""BitNet a4.8 / v2 activation schemes: INT4 absmean codes and scale, top-K counts, STE and lambda,
and the runtime's codes equal to training's."""

from __future__ import annotations

import math

import pytest
import torch

from bitnet_train.infer.activations import encode_activation as runtime_codes
from bitnet_train.quant.functional import quantize_activation, quantize_activation_scheme, scheme_codes, topk_sparsify
from bitnet_train.activation_schemes import is_known_scheme, parse_scheme

SCHEMES = ["int8_absmax", "int4_absmean", "int8_absmax_top50", "int8_absmax_top25"]


def _acts(seed: int, shape=(3, 5, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    return x * 10 ** (torch.rand(shape[:-1] + (1,), generator=g) * 4 - 2)  # very different per-token scales


def paper_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a4.8: Q(x) = beta / sqrt(7) * RoundClip(sqrt(7) x / (beta + eps), -8, 7), beta = mean|x| per token."""
    beta = x.abs().mean(-1, keepdim=True)
    return torch.clamp(torch.round(math.sqrt(7) * x / (beta + 1e-5)), -8, 7), beta / math.sqrt(7)


@pytest.mark.parametrize("seed", range(3))
def test_int4_codes_in_range_with_the_absmean_scale(seed):
    x = _acts(seed)
    codes, mult = scheme_codes(x, "int4_absmean")
    ref_codes, ref_mult = paper_int4(x)
    assert codes.dtype == torch.int8 and codes.min() >= -8 and codes.max() <= 7
    assert (codes == -8).any() or (codes == 7).any(), "the clip range is never reached: not a 4-bit grid"
    assert torch.equal(codes.float(), ref_codes)
    torch.testing.assert_close(mult, ref_mult.squeeze(-1), rtol=1e-6, atol=0)
    # the fake-quantized training value is codes * beta / sqrt(7), bit for bit
    assert torch.equal(quantize_activation_scheme(x, "int4_absmean"), codes.float() * mult[..., None])


def test_int4_zero_share_on_gaussian_inputs_is_the_papers_twelve_percent():
    """Codes are 0 for |x| < beta / (2 sqrt 7) = 0.151 sigma: 12.0% of a Gaussian (a4.8 Table 2: 12.0-12.1%)."""
    x = torch.randn(256, 4096, generator=torch.Generator().manual_seed(0))
    codes, _ = scheme_codes(x, "int4_absmean")
    expected = math.erf(math.sqrt(2 / math.pi) / (2 * math.sqrt(7)) / math.sqrt(2))
    assert expected == pytest.approx(0.1199, abs=1e-4)
    assert (codes == 0).float().mean().item() == pytest.approx(expected, abs=0.003)


@pytest.mark.parametrize("k,percent,keep", [(40, 50, 20), (41, 50, 21), (40, 25, 10), (7, 30, 3), (5, 1, 1)])
def test_topk_keeps_exactly_the_largest(k, percent, keep):
    x = torch.randn(6, 9, k, generator=torch.Generator().manual_seed(k))
    sparse = topk_sparsify(x, percent)
    kept = sparse != 0
    assert (kept.sum(-1) == keep).all()
    assert torch.equal(sparse[kept], x[kept])  # kept entries unchanged
    smallest_kept = x.abs().masked_fill(~kept, float("inf")).amin(-1)
    largest_dropped = x.abs().masked_fill(kept, 0.0).amax(-1)
    assert (smallest_kept >= largest_dropped).all()


def test_topk_then_int8():
    x = _acts(4)
    codes, mult = scheme_codes(x, "int8_absmax_top50")
    assert ((codes != 0).sum(-1) <= 20).all() and (codes.abs().amax(-1) == 127).all()
    dense_codes, dense_mult = scheme_codes(topk_sparsify(x, 50), "int8_absmax")
    assert torch.equal(codes, dense_codes) and torch.equal(mult, dense_mult)
    fake = quantize_activation_scheme(x, "int8_absmax_top50")
    torch.testing.assert_close(fake, codes.float() * mult[..., None], rtol=1e-6, atol=0)


def test_int8_scheme_is_the_b158_quantizer():
    x = _acts(5)
    assert torch.equal(quantize_activation_scheme(x, "int8_absmax"), quantize_activation(x, 8))
    assert torch.equal(quantize_activation_scheme(x, "int8_absmax", 0.3), quantize_activation(x, 8, 0.3))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_straight_through_and_lambda(scheme):
    x = _acts(6).requires_grad_(True)
    q = quantize_activation_scheme(x, scheme)
    assert not torch.equal(q, x)
    (q * torch.arange(40.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(40.0).expand_as(x))  # identity gradient, dropped entries included
    with torch.no_grad():
        assert torch.equal(quantize_activation_scheme(x, scheme, 0.0), x)
        half = quantize_activation_scheme(x, scheme, 0.5)
        torch.testing.assert_close(half, (x + q) / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_runtime_codes_are_trainings(scheme, dtype):
    x = _acts(7).to(dtype)
    codes, mult = runtime_codes(x, scheme)
    ref_codes, ref_mult = scheme_codes(x, scheme)
    assert torch.equal(codes, ref_codes) and torch.equal(mult, ref_mult)
    assert quantize_activation_scheme(x, scheme).dtype == dtype


def test_scheme_names():
    assert parse_scheme("int8_absmax_top50").topk_percent == 50 and parse_scheme("int4_absmean").bits == 4
    for bad in ("int8_absmax_top0", "int8_absmax_top100", "fp4", "int4_absmax", 4):
        assert not is_known_scheme(bad)
    with pytest.raises(ValueError, match="unknown activation scheme 'fp4'"):
        scheme_codes(_acts(0), "fp4")
