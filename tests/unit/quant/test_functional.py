"""The BitNet b1.58 quantizers against the formulas of docs/METHODS.md#bitlinear-b158 and transformers' WeightQuant / ActQuant."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.bitnet import ActQuant, WeightQuant

from bitnet_train.quant.functional import (
    SCALE_EPS,
    activation_codes,
    quantize_activation,
    quantize_weight,
    straight_through,
    ternary_codes,
    weight_scale,
)

LAMBDAS = [0.0, 0.5, 1.0]


def _weights(seed: int, shape=(24, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** (torch.rand((), generator=g) * 4 - 3)  # 1e-3 .. 10: many different gammas
    return torch.randn(shape, generator=g) * scale


def _acts(seed: int, shape=(3, 7, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    # per-token magnitudes that differ by orders of magnitude, so a shared scale would show
    return x * 10 ** (torch.rand(shape[:-1] + (1,), generator=g) * 4 - 2)


# ---- inline references, written from the formulas (docs/METHODS.md#bitlinear-b158) --------------------------------------------

def spec_weight_codes(w: torch.Tensor, method: str = "absmean") -> tuple[torch.Tensor, torch.Tensor]:
    a = w.float().abs()
    gamma = (a.mean() if method == "absmean" else a.flatten().sort().values[(a.numel() - 1) // 2])
    gamma = gamma.clamp(min=1e-5)
    return (w.float() / gamma).round().clamp(-1, 1), gamma


def spec_activation(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    s = 127 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return ((xf * s).round().clamp(-128, 127) / s).to(x.dtype)


def _ulp(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t, torch.tensor(float("inf"))) - t


# ---- weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["absmean", "absmedian"])
def test_weight_is_ternary_times_gamma(seed, method):
    w = _weights(seed, (25, 41))  # odd element count: the median is one element
    codes, gamma = spec_weight_codes(w, method)
    q = quantize_weight(w, method)
    assert q.dtype == w.dtype and q.shape == w.shape
    assert torch.equal(weight_scale(w, method), gamma)
    # exactly three values, {-g, 0, g}, with the documented codes ...
    values = q.unique()
    assert len(values) == 3 and values[1] == 0 and values[0] == -values[2]
    g = values[2]
    assert torch.equal(torch.sign(q), codes)
    # ... and g the scale itself, up to the last bit of the reference code's 1 / (1 / gamma)
    assert (g - gamma).abs() <= _ulp(gamma)
    # codes from ternary_codes are the ones the forward uses
    assert torch.equal(ternary_codes(w, gamma).float(), codes)
    assert ternary_codes(w, gamma).dtype == torch.int8


def test_gamma_is_mean_or_median_of_abs():
    w = torch.tensor([[3.0, -1.0, 0.5], [-0.25, 2.0, -8.0], [0.125, 1.5, -0.75]])
    assert weight_scale(w, "absmean").item() == pytest.approx(17.125 / 9, rel=1e-7)
    assert weight_scale(w, "absmedian").item() == 1.0
    # absmedian ignores an outlier that drags the mean up
    codes_median = ternary_codes(w, weight_scale(w, "absmedian"))
    assert codes_median.tolist() == [[1, -1, 0], [0, 1, -1], [0, 1, -1]]


@pytest.mark.parametrize("method", ["absmean", "absmedian"])
def test_zero_matrix_clamps_gamma(method):
    w = torch.zeros(8, 16)
    assert weight_scale(w, method).item() == pytest.approx(SCALE_EPS) and SCALE_EPS == 1e-5
    q = quantize_weight(w, method)
    assert torch.equal(q, w) and torch.isfinite(q).all()
    # a tiny matrix is quantized at the 1e-5 floor, not at its own (smaller) mean
    tiny = torch.full((4, 4), 3e-6)
    tiny[0, 0] = -7e-6
    expected = torch.zeros(4, 4, dtype=torch.int8)
    expected[0, 0] = -1  # -7e-6 / 1e-5 rounds to -1, 3e-6 / 1e-5 to 0
    assert weight_scale(tiny).item() == pytest.approx(1e-5)
    assert torch.equal(ternary_codes(tiny, weight_scale(tiny)), expected)
    assert torch.equal(quantize_weight(tiny), expected.float() * quantize_weight(tiny).abs().max())


@pytest.mark.parametrize("seed", range(64))
def test_weight_equals_transformers_weightquant(seed, dynamo_disabled):
    """Bit-exact in fp32 (with W / gamma instead of W * (1 / gamma) about 1 in 7 of these fail by 1 ulp)."""
    w = _weights(seed)
    assert torch.equal(quantize_weight(w), WeightQuant.apply(w))


def test_weight_bf16_is_fp32_result_cast(dynamo_disabled):
    w = _weights(7).bfloat16()
    q = quantize_weight(w)
    assert q.dtype == torch.bfloat16
    assert torch.equal(q, quantize_weight(w.float()).bfloat16())
    assert torch.equal(q, WeightQuant.apply(w))


# ---- activations --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(16))
def test_activation_equals_spec_and_transformers_actquant(seed, dynamo_disabled):
    x = _acts(seed)
    q = quantize_activation(x)
    assert torch.equal(q, spec_activation(x))
    assert torch.equal(q, ActQuant.apply(x))


def test_activation_codes_symmetric_and_reconstruct():
    x = _acts(3, (5, 9, 64))
    # make the negative extreme the absmax of every token: round(-max * 127 / max) must be -127
    x[..., 0] = -x.abs().amax(dim=-1) * 1.0
    codes, s = activation_codes(x)
    assert codes.dtype == torch.int8 and s.shape == (5, 9, 1)
    assert codes.min().item() == -127 and codes.max().item() <= 127
    assert (codes[..., 0] == -127).all()
    assert int((codes == -128).sum()) == 0
    # x ~= codes / s, within half a step of each token's own grid
    step = 1 / s
    assert ((codes.float() / s - x).abs() <= step / 2 * (1 + 1e-5)).all()
    # and the fake-quantized activation is exactly codes / s
    assert torch.equal(quantize_activation(x), codes.float() / s)


def test_activation_is_per_token():
    x = _acts(4, (2, 5, 32))
    full = quantize_activation(x)
    for b in range(2):
        for t in range(5):
            assert torch.equal(full[b, t], quantize_activation(x[b, t]))
    # scaling one token changes only that token's quantization grid
    y = x.clone()
    y[1, 2] *= 1000
    changed = quantize_activation(y)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.equal(changed[mask], full[mask])


def test_activation_zero_token_is_finite():
    x = torch.zeros(2, 3, 8)
    x[0, 1] = torch.linspace(-1, 1, 8)
    q = quantize_activation(x)
    assert torch.isfinite(q).all()
    assert torch.equal(q[1], torch.zeros(3, 8))


def test_activation_bf16_is_fp32_result_cast(dynamo_disabled):
    x = _acts(9).bfloat16()
    q = quantize_activation(x)
    assert q.dtype == torch.bfloat16
    assert torch.equal(q, quantize_activation(x.float()).bfloat16())
    assert torch.equal(q, ActQuant.apply(x))


# ---- straight-through gradients -----------------------------------------------------------------

@pytest.mark.parametrize("lam", LAMBDAS + [torch.tensor(0.0), torch.tensor(0.5), torch.tensor(1.0)],
                         ids=["0", "0.5", "1", "t0", "t0.5", "t1"])
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_gradient_passes_straight_through(kind, lam):
    base = _weights(1) if kind == "weight" else _acts(1)
    x = base.clone().requires_grad_(True)
    g = torch.randn_like(base)
    q = quantize_weight(x, lam=lam) if kind == "weight" else quantize_activation(x, lam=lam)
    (q * g).sum().backward()
    assert torch.equal(x.grad, g)


def test_gradient_has_no_clipping_mask():
    # a weight far beyond gamma is clamped to +-1 in the forward pass, but still gets its gradient
    w = torch.tensor([[100.0, 0.1, -0.1, -100.0]], requires_grad=True)
    quantize_weight(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_straight_through_returns_value_and_identity_grad():
    x = torch.randn(4, requires_grad=True)
    v = torch.full((4,), 3.0)
    y = straight_through(x, v)
    assert torch.equal(y, v)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(4.0))


# ---- lambda phase-in ----------------------------------------------------------------------------

@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_lambda_blending(kind, as_tensor):
    x = _weights(2) if kind == "weight" else _acts(2)
    quant = (lambda t, lam: quantize_weight(t, lam=lam)) if kind == "weight" else \
        (lambda t, lam: quantize_activation(t, lam=lam))
    lam = (lambda v: torch.tensor(v)) if as_tensor else (lambda v: v)
    full = quant(x, lam(1.0))
    ref = quantize_weight(x) if kind == "weight" else spec_activation(x)
    assert torch.equal(full, ref)
    assert torch.equal(quant(x, lam(0.0)), x)
    half = quant(x, lam(0.5))
    torch.testing.assert_close(half, (x + ref) / 2, rtol=0, atol=1e-6 * float(x.abs().max()))
    quarter = quant(x, lam(0.25))
    torch.testing.assert_close(quarter, x + 0.25 * (ref - x), rtol=0, atol=1e-6 * float(x.abs().max()))
    assert not torch.equal(half, x) and not torch.equal(half, ref)


def test_lambda_bf16_keeps_dtype():
    x = _acts(5).bfloat16()
    for lam in (0.0, 0.5, 1.0, torch.tensor(0.5)):
        assert quantize_activation(x, lam=lam).dtype == torch.bfloat16
        assert quantize_weight(x[0], lam=lam).dtype == torch.bfloat16
    assert torch.equal(quantize_activation(x, lam=0.0), x)
