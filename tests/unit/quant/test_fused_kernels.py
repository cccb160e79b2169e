"""The generated fused kernels (quant/fused_kernels.py) against the torch ops they are generated from."""

import os
import warnings

import pytest
import torch

from bitnet_train.config import ConfigError, QuantConfig
from bitnet_train.quant import fused_kernels as fk
from bitnet_train.quant.bitlinear import BitLinear


@pytest.fixture
def fresh_kernels(monkeypatch):
    """Every input size goes to the kernels; compiled kernels and failures are forgotten afterwards."""
    # with dynamo switched off torch.compile returns the function itself, and these tests would compare
    # the torch ops with themselves
    assert os.environ.get("TORCHDYNAMO_DISABLE") != "1" and not torch._dynamo.config.disable
    monkeypatch.setattr(fk, "MIN_ELEMENTS", dict.fromkeys(fk.MIN_ELEMENTS, 0))
    fk.reset()
    yield
    fk.reset()


def _both(fn, *args):
    """(plain torch ops, compiled kernel) results of `fn(*args)`."""
    plain = fn(*args)
    fused = fk.run(fn, True, 1 << 30, *args)
    assert fk._KERNELS[fn].kernel is not None and not fk._KERNELS[fn].failed
    return plain, fused


@pytest.mark.parametrize("want_float", [False, True])
def test_activation_codes_bit_identical(fresh_kernels, want_float):
    t = torch.randn(300, 200) * torch.rand(300, 1) * 5
    t[7] = 0.0  # an all-zero token: the scale's clamp
    (c0, s0, f0), (c1, s1, f1) = _both(fk.activation_codes, t, want_float)
    assert c1.dtype == torch.int8 and torch.equal(c0, c1) and torch.equal(s0, s1)
    assert (f1 is None) == (not want_float)
    if want_float:
        assert torch.equal(f0, f1) and torch.equal(f1, c1.float())
    assert c1.abs().max() == 127


def test_epilogue_dequantize_weight_codes_bit_identical(fresh_kernels):
    acc = torch.randint(-20000, 20000, (96, 40), dtype=torch.int32)
    s = torch.rand(96, 1) + 0.5
    inv, inv_cols = torch.tensor(31.25), torch.rand(40) * 40 + 10
    bias = torch.randn(40)
    for args in [(acc, s, inv, None, torch.float32), (acc, s, inv, bias, torch.float32),
                 (acc.float(), s, inv, bias, torch.bfloat16), (acc, s, inv_cols, bias, torch.float32)]:
        y0, y1 = _both(fk.epilogue, *args)
        assert y1.dtype == args[4] and torch.equal(y0, y1)
    codes = torch.randint(-127, 128, (96, 64), dtype=torch.int8)
    for s in (torch.rand(96, 1) + 0.1, torch.tensor(37.5)):
        d0, d1 = _both(fk.dequantize, codes, s, torch.float32)
        assert torch.equal(d0, d1)
    w = torch.randn(64, 48) * 0.02
    inv = 1.0 / w.abs().mean()
    w0, w1 = _both(fk.weight_codes, w, inv)
    assert w1.dtype == torch.int8 and torch.equal(w0, w1) and set(w1.unique().tolist()) == {-1, 0, 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_codes_equal_up_to_the_order_of_one_sum(fresh_kernels, dtype):
    """rstd's mean(x^2) may be summed in another order: rstd within 2 ulp; through it h (and so a token's
    scale) moves by an ulp of h's dtype, and codes differ only where h lay within that of a rounding
    boundary, and by one."""
    torch.manual_seed(0)
    x = (torch.randn(2048, 688) * 3).to(dtype)
    gain = (torch.rand(688) * 0.1 + 0.02).to(dtype)
    for want_float in (False, True):
        (c0, s0, f0, r0), (c1, s1, f1, r1) = _both(fk.norm_activation_codes, x, gain, 1e-5, want_float)
        torch.testing.assert_close(r1, r0, rtol=2.5e-7, atol=0)
        torch.testing.assert_close(s1, s0, rtol=5e-7 if dtype == torch.float32 else 2 ** -7, atol=0)
        diff = (c0.int() - c1.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= (1e-4 if dtype == torch.float32 else 1e-3)
        if want_float:
            assert torch.equal(f1, c1.float())


def _layers(fused_norm: bool, bias: bool, dtype=torch.float32):
    torch.manual_seed(1)
    a = BitLinear(160, 96, bias=bias, input_norm=fused_norm, dtype=dtype)
    b = BitLinear(160, 96, bias=bias, input_norm=fused_norm, dtype=dtype, fused_kernels="off")
    if fused_norm:
        with torch.no_grad():
            a.input_norm.weight.copy_(torch.rand(160, dtype=dtype) + 0.5)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("norm,bias", [(False, False), (False, True), (True, True)])
def test_bitlinear_with_kernels_equals_torch_ops(fresh_kernels, norm, bias):
    """Without a norm the forward is bit for bit; with one, as the rstd statement above allows.
    Gradients (x, weight, bias, gain) agree to fp32 rounding."""
    a, b = _layers(norm, bias)
    assert a.uses_int_matmul() and a.fused_kernels == "auto" and b.fused_kernels == "off"
    x = torch.randn(4, 50, 160) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    if norm:
        assert (ya - yb).abs().max() <= 1e-5 * yb.abs().max()
    else:
        assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    pairs = [(xa.grad, xb.grad), (a.weight.grad, b.weight.grad)]
    pairs += [(a.bias.grad, b.bias.grad)] if bias else []
    pairs += [(a.input_norm.weight.grad, b.input_norm.weight.grad)] if norm else []
    for got, want in pairs:
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert a.fused_kernels == "auto" and fk._KERNELS  # the kernels ran


def test_bitlinear_with_kernels_matches_the_float64_formula(fresh_kernels):
    """At a training shape (2048 tokens), against an independent formula rather than the torch ops:
    y = round(127 x / max|x|) @ clamp(round(W / mean|W|))^T * max|x| / 127 * mean|W| + b, in float64."""
    torch.manual_seed(2)
    layer = BitLinear(256, 688, bias=True)
    x = torch.randn(8, 256, 256)
    y = layer(x)
    assert fk._KERNELS[fk.activation_codes].kernel is not None and fk._KERNELS[fk.epilogue].kernel is not None
    xd, wd = x.double(), layer.weight.double()
    amax = xd.abs().amax(-1, keepdim=True)
    gamma = wd.abs().mean()
    ref = ((xd * (127 / amax)).round() @ (wd / gamma).round().clamp(-1, 1).t()) * (amax / 127) * gamma \
        + layer.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=2.5e-7, atol=1e-6)


def test_bf16_autocast_output_with_kernels(fresh_kernels):
    a, b = _layers(True, True)
    x = torch.randn(3, 40, 160)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = a(x), b(x)
    assert ya.dtype == yb.dtype == torch.bfloat16
    assert (ya.float() - yb.float()).abs().max() <= 2 ** -7 * yb.float().abs().max()


def test_small_inputs_and_compiled_models_use_torch_ops(monkeypatch):
    """Under MIN_ELEMENTS elements nothing is compiled; inside a torch.compile trace the plain ops
    are traced (the model's own compilation fuses them), so no kernel of this module is made."""
    assert os.environ.get("TORCHDYNAMO_DISABLE") != "1" and not torch._dynamo.config.disable
    fk.reset()
    layer = BitLinear(32, 16, input_norm=True)
    layer(torch.randn(4, 32)).sum().backward()
    assert fk._KERNELS == {}
    monkeypatch.setattr(fk, "MIN_ELEMENTS", dict.fromkeys(fk.MIN_ELEMENTS, 0))
    torch._dynamo.reset()  # earlier tests' compilations of BitLinear.forward could have hit the recompile limit
    y = torch.compile(layer, fullgraph=True)(torch.randn(4, 32))
    y.sum().backward()
    assert fk._KERNELS == {}


def test_compile_failure_warns_once_and_falls_back(fresh_kernels, monkeypatch):
    def broken(fn, **kwargs):
        def kernel(*args):
            raise RuntimeError("no C++ compiler found")
        return kernel

    monkeypatch.setattr(torch, "compile", broken)
    t = torch.randn(64, 32)
    with pytest.warns(RuntimeWarning, match="activation_codes kernel could not be compiled.*no C\\+\\+ compiler"):
        codes, s, _ = fk.run(fk.activation_codes, True, t.numel(), t, False)
    assert torch.equal(codes, fk.activation_codes(t, False)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fk.run(fk.activation_codes, True, t.numel(), t, False)  # no second warning


def test_setting_validated():
    assert QuantConfig().fused_kernels == "auto"
    with pytest.raises(ConfigError, match="fused_kernels"):
        QuantConfig(fused_kernels="on")
    with pytest.raises(ValueError, match="fused_kernels"):
        BitLinear(8, 8, fused_kernels="yes")
