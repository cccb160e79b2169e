"""BitLinear equals transformers' quantizers around F.linear, shares Parameters and phases in by lambda."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.integrations.bitnet import ActQuant, AutoBitLinear, WeightQuant

from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.functional import quantize_activation, quantize_weight
from bitnet_train.quant.norm import RMSNorm

pytestmark = pytest.mark.usefixtures("dynamo_disabled")


def _ref_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, written out."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _layer(seed: int, bias: bool, **kwargs) -> BitLinear:
    """The fake-quant path (bit for bit the reference's arithmetic); the integer path is tested below."""
    kwargs.setdefault("int_matmul", "off")
    torch.manual_seed(seed)
    layer = BitLinear(48, 20, bias=bias, **kwargs)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
        if bias:
            layer.bias.normal_(0, 0.5)
        if layer.input_norm is not None:
            layer.input_norm.weight.uniform_(0.5, 1.5)
    return layer


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("norm", [False, True])
def test_forward_equals_transformers_quantizers(seed, bias, norm):
    layer = _layer(seed, bias, input_norm=norm, norm_eps=1e-6)
    x = torch.randn(3, 5, 48) * 4
    h = _ref_rmsnorm(x, layer.input_norm.weight, 1e-6) if norm else x
    expected = F.linear(ActQuant.apply(h), WeightQuant.apply(layer.weight), layer.bias)
    assert torch.equal(layer(x), expected)
    # the integer forward (the default) rounds once instead of per product: within 1e-5 of max|y|
    layer.int_matmul = "auto"
    assert (layer(x) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_forward_equals_autobitlinear_online():
    layer = _layer(0, True, input_norm=True, norm_eps=1e-6)
    ref = AutoBitLinear(48, 20, bias=True, online_quant=True, use_rms_norm=True, rms_norm_eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
        ref.rms_norm.weight.copy_(layer.input_norm.weight)
    x = torch.randn(2, 7, 48)
    assert torch.equal(layer(x), ref(x))


def test_is_a_linear_and_defaults():
    layer = BitLinear(16, 8)
    assert isinstance(layer, nn.Linear)
    assert layer.bias is None and layer.input_norm is None
    assert layer.weight_scale == "absmean" and layer.activation_bits == 8
    assert layer.weight_lambda == 1.0 and layer.activation_lambda == 1.0


def test_from_linear_shares_parameters():
    linear = nn.Linear(12, 6, bias=True)
    layer = BitLinear.from_linear(linear, input_norm=True, weight_scale="absmedian")
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert layer.in_features == 12 and layer.out_features == 6
    assert layer.weight_scale == "absmedian"
    # an optimizer step on one is a step on the other
    with torch.no_grad():
        linear.weight.add_(1.0)
    assert torch.equal(layer.weight, linear.weight)
    no_bias = BitLinear.from_linear(nn.Linear(12, 6, bias=False))
    assert no_bias.bias is None
    assert [n for n, _ in no_bias.named_parameters()] == ["weight"]


def test_from_linear_keeps_dtype():
    linear = nn.Linear(8, 4, dtype=torch.bfloat16)
    layer = BitLinear.from_linear(linear, input_norm=True)
    assert layer.input_norm.weight.dtype == torch.bfloat16
    assert layer(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_input_norm_starts_at_ones_and_is_a_parameter():
    layer = BitLinear(10, 4, input_norm=True, norm_eps=1e-8)
    assert isinstance(layer.input_norm, RMSNorm)
    assert torch.equal(layer.input_norm.weight, torch.ones(10))
    assert layer.input_norm.eps == 1e-8
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "input_norm.weight"}


def test_input_norm_is_applied_before_activation_quant():
    layer = _layer(1, False, input_norm=True, norm_eps=1e-5)
    x = torch.randn(4, 48) * 100
    expected = F.linear(quantize_activation(layer.input_norm(x)), quantize_weight(layer.weight))
    assert torch.equal(layer(x), expected)
    # without the norm the result differs (the norm weights are not ones)
    plain = BitLinear.from_linear(layer)
    assert not torch.allclose(plain(x), layer(x))


def test_absmedian_uses_median_scale():
    layer = _layer(2, False, weight_scale="absmedian")
    w = layer.weight.detach()
    inv = 1.0 / w.abs().flatten().sort().values[(w.numel() - 1) // 2]
    assert torch.equal(layer.quantized_weight(), (w * inv).round().clamp(-1, 1) / inv)


def test_set_lambda():
    layer = _layer(3, True)
    x = torch.randn(5, 48)
    layer.set_lambda(weight=0.0, activation=0.0)
    assert layer.weight_lambda == 0.0 and layer.activation_lambda == 0.0
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.set_lambda(activation=1.0)  # weight stays at 0
    assert layer.weight_lambda == 0.0 and layer.activation_lambda == 1.0
    assert torch.equal(layer(x), F.linear(ActQuant.apply(x), layer.weight, layer.bias))
    layer.set_lambda(weight=1.0)
    assert torch.equal(layer(x), F.linear(ActQuant.apply(x), WeightQuant.apply(layer.weight), layer.bias))
    layer.set_lambda(weight=0.5, activation=0.5)
    w_half = layer.weight + 0.5 * (WeightQuant.apply(layer.weight) - layer.weight)
    x_half = x + 0.5 * (ActQuant.apply(x) - x)
    torch.testing.assert_close(layer(x), F.linear(x_half, w_half, layer.bias), rtol=1e-6, atol=1e-6)


def test_backward_reaches_latent_weight_bias_and_norm():
    layer = _layer(4, True, input_norm=True)
    x = torch.randn(6, 48, requires_grad=True)
    layer(x).square().sum().backward()
    for p in (layer.weight, layer.bias, layer.input_norm.weight, x):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the weight gradient is the one of F.linear at the quantized operands (straight through)
    xq = ActQuant.apply(layer.input_norm(x.detach()))
    gy = 2 * layer(x.detach())
    torch.testing.assert_close(layer.weight.grad, gy.T @ xq, rtol=1e-5, atol=1e-5)


def test_extra_repr_names_the_method():
    text = repr(BitLinear(8, 4, input_norm=True, norm_eps=1e-6, weight_scale="absmedian"))
    assert "absmedian" in text and "a8" in text and "input_norm(eps=1e-06)" in text

# torch.compile of BitLinear is not exercised here: compiling on 2 CPU cores takes tens of seconds.
