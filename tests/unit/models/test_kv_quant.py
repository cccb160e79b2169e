"""Low-bit keys and values (a4.8's 3- and 4-bit KV cache): per head and token absmax codes in the cache,
cached decoding equal to the cache-free quantized forward, and the switch."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.models.decoder import CausalLM, LayerKVCache
from bitnet_train.quant.convert import quantize_model

CFG = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)


def _model(quant: QuantConfig | None = None) -> CausalLM:
    torch.manual_seed(0)
    m = CausalLM(ModelConfig(**CFG, initializer_range=0.1))
    quantize_model(m, quant or QuantConfig(norm="subln"))
    return m.eval()


def _ids(n: int = 14) -> torch.Tensor:
    return torch.randint(0, 97, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("bits", [3, 4])
def test_cache_stores_per_head_codes_and_scales(bits):
    k = torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(2)) * torch.rand(2, 3, 5, 1) * 4
    v = torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(3))
    cache = LayerKVCache(8, bits)
    k_out, v_out = cache.update(k, v)
    qmax = 2 ** (bits - 1) - 1
    assert cache.keys.dtype == torch.int8 and cache.key_scales.shape == (2, 3, 8, 1)
    codes = cache.keys[:, :, :5]
    assert codes.min() >= -qmax - 1 and codes.max() <= qmax and (codes.abs().amax(-1) == qmax).all()
    # one scale per head and token: qmax / max|k| over the head dimension
    torch.testing.assert_close(cache.key_scales[:, :, :5], qmax / k.abs().amax(-1, keepdim=True))
    torch.testing.assert_close(k_out, codes.float() / cache.key_scales[:, :, :5])
    assert k_out.shape == k.shape and v_out.shape == v.shape
    err = (k_out - k).abs() / k.abs().amax(-1, keepdim=True)
    assert err.max() <= 0.5 / qmax + 1e-6 and err.max() > 0


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("chunks", [[5] + [1] * 9, [14], [3, 4, 7]])
def test_cached_decoding_equals_quantized_forward(bits, chunks):
    """Exact up to float summation order. The linears stay full precision here: ternary layers make every
    key and value an integer multiple of one per-token factor, so ties at .5 on the 3/4-bit grid are common
    and a last-bit difference between batched and one-token matmuls can round them either way."""
    model = _model(QuantConfig(enabled=False, kv_bits=bits))
    assert model.kv_bits == bits
    ids = _ids()
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(16)
        parts, start = [], 0
        for size in chunks:
            parts.append(model(ids[:, start:start + size], cache=cache))
            start += size
        model.set_kv_bits(None)
        unquantized = model(ids)
    assert cache.bits == bits and cache.layers[0].keys.dtype == torch.int8
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert (full - unquantized).abs().max() > 1e-3


def test_switch_and_cost():
    model = _model()
    ids = _ids()
    with torch.no_grad():
        ref = model(ids)
        errors = {}
        for bits in (8, 4, 3):
            model.set_kv_bits(bits)
            errors[bits] = (model(ids) - ref).abs().mean().item()
        model.set_kv_bits(None)
        assert torch.equal(model(ids), ref)
    assert 0 < errors[8] < errors[4] < errors[3]
    with pytest.raises(ValueError, match="kv bits"):
        model.set_kv_bits(1)
    cache = model.new_cache(16)
    model.set_kv_bits(4)  # attention and an existing full-precision cache now disagree
    with pytest.raises(ValueError, match="build the cache with model.new_cache after model.set_kv_bits"):
        model(ids[:, :3], cache=cache)


def test_training_gradient_passes_straight_through():
    model = _model(QuantConfig(norm="subln", kv_bits=3)).train()
    model(_ids()).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if "k_proj.weight" in n or "v_proj.weight" in n)
