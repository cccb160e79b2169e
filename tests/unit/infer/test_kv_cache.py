"""Decoding with the KV cache gives the logits of the full forward pass, full precision and quantized;
the cache is bounded and refuses padded batches."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import quantize_model

CFG = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)


def _model(quantized: bool, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    m = CausalLM(ModelConfig(**CFG, initializer_range=0.1))
    if quantized:
        quantize_model(m, QuantConfig(norm="subln"))
    return m.eval()


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 1, 3, 2], [12]])
def test_incremental_equals_full(quantized, chunks):
    model = _model(quantized)
    ids = torch.randint(0, 97, (2, sum(chunks)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(32)
        parts, start = [], 0
        for size in chunks:
            parts.append(model(ids[:, start:start + size], cache=cache))
            start += size
    assert cache.length == ids.shape[1]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert full.abs().max() > 0.5


def test_no_cache_path_unchanged_by_cache_argument():
    model = _model(True)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids, cache=None))
        assert torch.equal(model(ids), model(ids, cache=model.new_cache(9)))  # empty cache: the same causal path


def test_cache_limits():
    model = _model(False)
    cache = model.new_cache(4)
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="holds 4 positions"):
            model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="unpadded"):
            model(torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 2), cache=model.new_cache(4))
