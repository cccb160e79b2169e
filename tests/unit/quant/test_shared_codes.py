"""Layers that read one activation share its codes and x_q (quant/shared_codes.py), with the numbers
each layer computes alone."""

import gc

import pytest
import torch

from bitnet_train.quant import fused_kernels as fk
from bitnet_train.quant import shared_codes
from bitnet_train.quant.bitlinear import BitLinear

M, K, NS = 96, 64, (48, 40, 40)


@pytest.fixture
def counted(monkeypatch):
    """Counts of activation quantizations and of activation dequantizations ([M, K] codes)."""
    calls = {"codes": 0, "x_q": 0}
    codes_fn, deq_fn = fk.activation_codes, fk.dequantize

    def activation_codes(t, want_float):
        calls["codes"] += 1
        return codes_fn(t, want_float)

    def dequantize(codes, scale, dtype):
        calls["x_q"] += codes.shape == (M, K)
        return deq_fn(codes, scale, dtype)

    activation_codes.__name__, dequantize.__name__ = "activation_codes", "dequantize"
    monkeypatch.setattr(fk, "activation_codes", activation_codes)
    monkeypatch.setattr(fk, "dequantize", dequantize)
    shared_codes.reset()
    yield calls
    shared_codes.reset()


def _layers(seed=0, fused="off"):
    torch.manual_seed(seed)
    return [BitLinear(K, n, fused_kernels=fused) for n in NS]


@pytest.mark.parametrize("fused", ["off", "auto"])
def test_shared_input_same_numbers_as_separate_inputs(counted, fused):
    layers = _layers(fused=fused)
    x0 = torch.randn(2, M // 2, K)
    x = x0.clone().requires_grad_()
    outs = [layer(x) for layer in layers]
    sum((o * torch.randn_like(o, generator=torch.Generator().manual_seed(i))).sum() for i, o in enumerate(outs)).backward()
    shared = ([o.detach() for o in outs], [l.weight.grad.clone() for l in layers], x.grad.clone())
    assert counted == {"codes": 1, "x_q": 1}

    for layer in layers:
        layer.weight.grad = None
    xs = [x0.clone().requires_grad_() for _ in layers]  # one tensor per layer: nothing to share
    outs = [layer(xi) for layer, xi in zip(layers, xs)]
    sum((o * torch.randn_like(o, generator=torch.Generator().manual_seed(i))).sum() for i, o in enumerate(outs)).backward()
    assert counted == {"codes": 4, "x_q": 4}
    for a, b in zip(shared[0], outs):
        assert torch.equal(a, b)
    for a, layer in zip(shared[1], layers):
        assert torch.equal(a, layer.weight.grad)
    # x.grad sums the three layers' input gradients; autograd may add them in another order
    torch.testing.assert_close(shared[2], sum(xi.grad for xi in xs), rtol=1e-6, atol=1e-6)


def test_changed_or_other_input_is_quantized_again(counted):
    layers = _layers()
    x = torch.randn(M, K)
    layers[0](x)
    layers[1](x)
    assert counted["codes"] == 1
    with torch.no_grad():
        x.mul_(2)  # in place: the version counter moves
    y = layers[2](x)
    assert counted["codes"] == 2
    assert torch.equal(y, layers[2](x.clone()))  # the same values in another tensor are quantized afresh
    assert counted["codes"] == 3
    layers[0](x[:, :K])  # a view of x is another tensor
    assert counted["codes"] == 4


def test_entry_goes_with_its_input(counted):
    layer = _layers()[0]
    x = torch.randn(M, K)
    layer(x)
    assert shared_codes._LAST[0] is not None
    del x
    gc.collect()
    assert shared_codes._LAST[0] is None


def test_x_q_released_after_last_reader(counted):
    layers = _layers()
    layers[1].weight.requires_grad_(False)  # a reader that needs no weight gradient still counts itself out
    x = torch.randn(M, K, requires_grad=True)
    outs = [layer(x) for layer in layers]
    readers = shared_codes._LAST[0].readers
    assert readers.count == 3
    sum(o.sum() for o in outs).backward()
    assert readers.count == 0 and readers._x_q is None
    assert counted["x_q"] == 1
    assert layers[1].weight.grad is None and layers[0].weight.grad is not None


def test_retain_graph_second_backward_same_gradients(counted):
    layers = _layers()
    x = torch.randn(M, K, requires_grad=True)
    loss = sum(layer(x).square().sum() for layer in layers)
    loss.backward(retain_graph=True)
    first = [layer.weight.grad.clone() for layer in layers]
    for layer in layers:
        layer.weight.grad = None
    loss.backward()
    for a, layer in zip(first, layers):
        assert torch.equal(a, layer.weight.grad)


@pytest.mark.parametrize("reentrant", [False, True])
def test_under_activation_checkpointing_same_gradients(counted, reentrant):
    from torch.utils.checkpoint import checkpoint

    layers = _layers()
    x0 = torch.randn(M, K)

    def block(x):
        return sum(layer(x).square().sum() for layer in layers)

    x = x0.clone().requires_grad_()
    block(x).backward()
    plain = [layer.weight.grad.clone() for layer in layers] + [x.grad.clone()]
    for layer in layers:
        layer.weight.grad = None
    x = x0.clone().requires_grad_()
    checkpoint(block, x, use_reentrant=reentrant).backward()
    for a, b in zip(plain, [layer.weight.grad for layer in layers] + [x.grad]):
        assert torch.equal(a, b)


def test_compiled_fullgraph_no_sharing_state():
    """Inside torch.compile nothing is shared here (a traced function may not mutate an outside object):
    the model compiles as one graph and its gradients match eager."""
    torch._dynamo.reset()
    shared_codes.reset()
    layers = _layers()
    x = torch.randn(M, K, requires_grad=True)

    def block(x):
        return sum(layer(x).square().sum() for layer in layers)

    block(x).backward()
    eager = [layer.weight.grad.clone() for layer in layers] + [x.grad.clone()]
    for layer in layers:
        layer.weight.grad = None
    x.grad = None
    shared_codes.reset()
    torch.compile(block, fullgraph=True)(x).backward()
    assert shared_codes._LAST[0] is None
    for a, b in zip(eager, [layer.weight.grad for layer in layers] + [x.grad]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_inference_tensors_are_quantized_by_each_reader(counted):
    """An inference tensor has no version counter (an in-place change could not be seen): no sharing."""
    layers = _layers()
    with torch.inference_mode():
        x = torch.randn(M, K)
        outs = [layer(x) for layer in layers]
        x.mul_(2)  # in place, invisible to a version check
        again = layers[0](x)
        assert counted["codes"] == 4 and shared_codes._LAST[0] is None
        with torch.no_grad():
            x_normal = x.clone()  # the same values in another tensor
            assert torch.equal(again, layers[0](x_normal))
            assert torch.equal(outs[1], layers[1](x_normal / 2))


def test_layer_setting_turns_sharing_off(counted):
    layers = _layers()
    x = torch.randn(M, K, requires_grad=True)
    shared = [layer(x) for layer in layers]
    assert counted["codes"] == 1
    for layer in layers:
        layer.share_input_codes = False
    alone = [layer(x) for layer in layers]
    assert counted["codes"] == 4
    sum(o.sum() for o in alone).backward()
    assert counted["x_q"] == 3
    for a, b in zip(shared, alone):
        assert torch.equal(a, b)


def test_bench_tool_whole_model_same_losses():
    """tools/bench_shared_codes.py: training steps of the tiny b158 model with sharing on and off give the same
    losses, step for step."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "tools" / "bench_shared_codes.py"
    spec = importlib.util.spec_from_file_location("bench_shared_codes", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.measure("tiny", steps=2, warmup=1, threads=torch.get_num_threads())
    assert result["same_loss"] and result["on_ms"] > 0 and result["off_ms"] > 0
