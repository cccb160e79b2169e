"""BitLinear's integer forward against an independent float64 formula and against the fake-quant path."""

import pytest
import torch

from bitnet_train.quant import int_forward
from bitnet_train.quant.bitlinear import BitLinear


def _reference(x, w, bias=None):
    """y = round(127 x / max|x|) @ clamp(round(W / mean|W|))^T * max|x| / 127 * mean|W|, in float64."""
    xd, wd = x.double(), w.double()
    amax = xd.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    cx = (xd * (127 / amax)).round().clamp(-128, 127)
    gamma = wd.abs().mean().clamp(min=1e-5)
    cw = (wd / gamma).round().clamp(-1, 1)
    y = (cx @ cw.t()) * (amax / 127) * gamma
    return y if bias is None else y + bias.double()


def _pair(in_f=48, out_f=40, bias=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    a = BitLinear(in_f, out_f, bias=bias, dtype=dtype, int_matmul="auto")
    b = BitLinear(in_f, out_f, bias=bias, dtype=dtype, int_matmul="off")
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("bias", [False, True])
def test_int_forward_matches_float64_formula(bias):
    layer, _ = _pair(bias=bias)
    x = torch.randn(3, 5, 48)
    assert layer.uses_int_matmul()
    y = layer(x)
    ref = _reference(x, layer.weight, layer.bias)
    # one fp32 rounding of the epilogue (and of the bias add): 2 ulp relative plus the bias' ulp
    torch.testing.assert_close(y.double(), ref, rtol=2.5e-7, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2 ** -6)])
def test_int_forward_matches_fake_quant_within_stated_tolerance(dtype, rtol):
    """Stated tolerance: fp32 agrees to 1e-5 of max|y| (the fake path's rounded float products and sums);
    bf16 to 2^-6 of max|y| (the fake path multiplies bf16-rounded x_q, W_q and accumulates in bf16)."""
    a, b = _pair(in_f=256, out_f=64, dtype=dtype)
    x = torch.randn(4, 7, 256, dtype=dtype)
    ya, yb = a(x), b(x)
    assert not b.uses_int_matmul()
    scale = yb.float().abs().max()
    assert (ya.float() - yb.float()).abs().max() <= rtol * scale
    assert not torch.equal(ya, torch.zeros_like(ya))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_equal_fake_quant(dtype):
    a, b = _pair(bias=True, dtype=dtype)
    x = torch.randn(2, 6, 48, dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 6, 40, dtype=dtype)
    a(xa).backward(g)
    b(xb).backward(g)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    torch.testing.assert_close(a.weight.grad, b.weight.grad, **tol)
    torch.testing.assert_close(a.bias.grad, b.bias.grad, **tol)


def test_cuda_shape_rule():
    cuda = torch.device("cuda")
    assert int_forward.int_mm_takes(32, 64, 32, cuda)
    assert not int_forward.int_mm_takes(16, 64, 32, cuda)
    assert not int_forward.int_mm_takes(32, 60, 32, cuda)


def test_fake_quant_path_for_phase_in_and_other_schemes():
    layer = BitLinear(32, 16, int_matmul="auto")
    layer.set_lambda(weight=0.5)
    assert not layer.uses_int_matmul()
    layer.set_lambda(weight=1.0)
    assert layer.uses_int_matmul()
    assert not BitLinear(32, 16, activation_scheme="int4_absmean", int_matmul="auto").uses_int_matmul()
    assert BitLinear(32, 16, activation_scheme="int8_absmax", int_matmul="auto").uses_int_matmul()
    assert not BitLinear(32, 16, int_matmul="off").uses_int_matmul()
    with pytest.raises(ValueError):
        BitLinear(32, 16, int_matmul="yes")


def test_weight_quantized_once_per_optimizer_step(monkeypatch):
    calls = []
    real = int_forward.ternary_weight_codes
    monkeypatch.setattr(int_forward, "ternary_weight_codes", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(2)
    layer = BitLinear(32, 24, int_matmul="auto")
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(4, 32)
    for _ in range(3):  # gradient accumulation: three micro-batches, one step
        layer(x).square().sum().backward()
    assert len(calls) == 1
    opt.step()
    with torch.no_grad():
        y = layer(x)  # evaluation after the step sees the new weight
    assert len(calls) == 2
    torch.testing.assert_close(y.double(), _reference(x, layer.weight), rtol=2.5e-7, atol=1e-6)
    layer(x)
    assert len(calls) == 2


def test_saves_codes_not_float_copies():
    layer = BitLinear(64, 32, int_matmul="auto")
    x = torch.randn(8, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    big_float = [t for t in saved if t.is_floating_point() and t.numel() >= 32 * 8]
    assert big_float == []
    assert [t.dtype for t in saved if not t.is_floating_point()] == [torch.int8, torch.int8]


def test_compiles_and_stays_within_tolerance():
    torch.manual_seed(3)
    layer = BitLinear(64, 32, int_matmul="auto")
    x = torch.randn(4, 8, 64, requires_grad=True)
    y = torch.compile(layer)(x)
    torch.testing.assert_close(y.double(), _reference(x, layer.weight), rtol=1e-6, atol=1e-6)
    y.sum().backward()
    w_q = (layer.weight.double() / layer.weight.double().abs().mean()).round().clamp(-1, 1) \
        * layer.weight.double().abs().mean()
    torch.testing.assert_close(x.grad.double(), w_q.sum(0).expand_as(x), rtol=1e-5, atol=1e-5)


def test_update_through_data_is_seen_after_optimizer_step():
    """An update written through .data (no version bump), as DeepSpeed writes, is seen after a step."""
    torch.manual_seed(4)
    layer = BitLinear(32, 16, int_matmul="auto")
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    x = torch.randn(3, 32)
    layer(x)
    layer.weight.data.mul_(-1.0)
    opt.step()
    torch.testing.assert_close(layer(x).double(), _reference(x, layer.weight), rtol=2.5e-7, atol=1e-6)


def test_autocast_bf16_output_and_gradient_dtypes():
    torch.manual_seed(5)
    layer = BitLinear(32, 16, bias=True, int_matmul="auto")
    x = torch.randn(3, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == layer.weight.grad.dtype == layer.bias.grad.dtype == torch.float32


def _norm_pair(in_f=64, out_f=48, bias=True, dtype=torch.float32, seed=0):
    """A BitLinear with its own input norm (fused into the integer forward) and the same computation
    unfused: a separate RMSNorm module (autograd's own backward) followed by a norm-less BitLinear."""
    from bitnet_train.quant.norm import RMSNorm

    torch.manual_seed(seed)
    fused = BitLinear(in_f, out_f, bias=bias, dtype=dtype, input_norm=True, norm_eps=1e-5, int_matmul="auto")
    with torch.no_grad():
        fused.input_norm.weight.copy_(torch.rand(in_f, dtype=dtype) + 0.5)
    norm = RMSNorm(in_f, eps=1e-5, dtype=dtype)
    plain = BitLinear(in_f, out_f, bias=bias, dtype=dtype, int_matmul="auto")
    with torch.no_grad():
        norm.weight.copy_(fused.input_norm.weight)
        plain.weight.copy_(fused.weight)
        if bias:
            plain.bias.copy_(fused.bias)
    return fused, norm, plain


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_fused_norm_equals_norm_then_layer(dtype, rtol):
    """Forward bit for bit (the same ops); gradients of x, the gain, the weight and the bias equal
    autograd's through the separate norm up to the order of a few fp32 sums (bf16: its rounding)."""
    fused, norm, plain = _norm_pair(dtype=dtype)
    assert fused._fused_norm() and fused.uses_int_matmul()
    x = (torch.randn(3, 5, 64) * 3).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fused(xa), plain(norm(xb))
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    for got, want in [(xa.grad, xb.grad), (fused.input_norm.weight.grad, norm.weight.grad),
                      (fused.weight.grad, plain.weight.grad), (fused.bias.grad, plain.bias.grad)]:
        scale = want.float().abs().max()
        assert scale > 0
        assert (got.float() - want.float()).abs().max() <= rtol * scale


def test_fused_norm_gradients_as_accurate_as_autograds_at_training_shape():
    """At a training shape (2048 tokens, K = 688) the fused backward's gain and input gradients stay
    within 5e-7 (relative, 2-norm) of a float64 straight-through formula, as autograd's own norm
    backward does (about 2e-7): the gain gradient sums 2048 products per element, and an fp32 gemv
    of rstd^T (dh * x) misses by 9e-7 there."""
    torch.manual_seed(0)
    m, k, n = 2048, 688, 256
    x = (torch.randn(m, k) * 2).requires_grad_()
    gain = (torch.rand(k) * 0.1 + 0.02).requires_grad_()
    w = torch.randn(n, k) * 0.05
    w_codes, inv = int_forward.ternary_weight_codes(w)
    g = torch.randn(m, n)
    int_forward.norm_int_bitlinear(x, gain, 1e-5, w, None, w_codes, inv).backward(g)
    xd, gd = x.detach().double(), gain.detach().double()
    dh = g.double() @ (w_codes.double() / inv.double())  # straight-through: the quantizers pass dh
    rstd = torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5)
    xn = xd * rstd
    dxn = dh * gd
    for got, want in [(gain.grad, (dh * xn).sum(0)), (x.grad, rstd * (dxn - xn * (dxn * xn).mean(-1, keepdim=True)))]:
        assert ((got.double() - want).norm() / want.norm()).item() <= 5e-7


def _saved_float_bytes(fn):
    """Bytes of floating-point tensors autograd keeps for backward while `fn()` builds its graph."""
    saved = []

    def pack(t):
        if t.is_floating_point():
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(saved), out


def test_fused_norm_keeps_no_float_copy_of_the_norm_output():
    fused, norm, plain = _norm_pair(in_f=256, out_f=32, bias=False)
    x = torch.randn(64, 256, requires_grad=True)
    fused_bytes, _ = _saved_float_bytes(lambda: fused(x))
    plain_bytes, _ = _saved_float_bytes(lambda: plain(norm(x)))
    full = x.numel() * 4
    # fused: x, per token its rstd and activation scale, the gain and 1/gamma; unfused: also x * rstd
    assert fused_bytes <= full + 2 * 64 * 4 + 256 * 4 + 4
    assert plain_bytes >= fused_bytes + full


def test_norm_outside_the_fusion_when_inactive_or_rotated():
    layer = BitLinear(64, 32, input_norm=True, int_matmul="auto")
    assert layer._fused_norm()
    layer.fuse_input_norm = False
    assert not layer._fused_norm()
    layer.fuse_input_norm = True
    layer.input_norm_active = False
    assert not layer._fused_norm()
    rotated = BitLinear(64, 32, input_norm=True, hadamard_block=64, int_matmul="auto")
    assert not rotated._fused_norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codes_read_back_from_a_gathered_quantized_weight(dtype):
    """FSDP2's code gather hands the layer Q_w(W) = codes / inv in the parameter dtype; the codes and scale
    read back from it are the quantizer's codes and the gamma the fake-quant forward multiplies by."""
    torch.manual_seed(3)
    w = torch.randn(40, 48)
    codes, inv = int_forward.ternary_weight_codes(w)
    w_q = (codes.float() / inv).to(dtype)
    got_codes, got_inv = int_forward.gathered_weight_codes(w_q)
    assert torch.equal(got_codes, codes) and got_codes.dtype == torch.int8
    assert got_inv.dtype == torch.float32
    assert torch.equal(got_inv, 1.0 / w_q.abs().max().float())  # of the stored gamma, which F.linear multiplies by
    assert float(got_inv) == pytest.approx(float(inv), rel=1e-7 if dtype == torch.float32 else 2 ** -8)
    zero_codes, zero_inv = int_forward.gathered_weight_codes(torch.zeros(4, 8, dtype=dtype))
    assert not zero_codes.any() and torch.isfinite(zero_inv)


def test_layer_with_a_gathered_quantized_weight_runs_the_integer_forward(monkeypatch):
    """A layer flagged as holding FSDP2's gathered Q_w(W) (outside FSDP2 here) multiplies its codes as
    integers and gives the fake-quant product of that same weight."""
    torch.manual_seed(4)
    a, b = _pair(bias=True)
    codes, inv = int_forward.ternary_weight_codes(a.weight)
    with torch.no_grad():
        for layer in (a, b):
            layer.weight.copy_(codes.float() / inv)
            layer.weight_gathered_quantized = True
    x = torch.randn(5, 48)
    calls = []
    real = int_forward._IntBitLinear.apply
    monkeypatch.setattr(int_forward._IntBitLinear, "apply", lambda *args: calls.append(1) or real(*args))
    with torch.no_grad():
        y = a(x)
        assert calls == [1]
        torch.testing.assert_close(y, b(x), rtol=0, atol=1e-5 * float(y.abs().max()))
