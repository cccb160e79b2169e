"""CausalLM: causality, grouped-query shapes, the padding-mask path and tied embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.models.decoder import CausalLM, RMSNorm
from bitnet_train.quant.convert import quantize_model

V = 61


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, rope_theta=10000.0, initializer_range=0.2)
    base.update(kw)
    return ModelConfig(**base)


def _model(**kw) -> CausalLM:
    torch.manual_seed(0)
    m = CausalLM(_cfg(**kw)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that nothing hides behind ones and zeros
        for name, p in m.named_parameters():
            if isinstance(m.get_submodule(name.rsplit(".", 1)[0]), RMSNorm):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
    return m


@pytest.mark.parametrize("kw", [{}, dict(qk_norm=True, attention_bias=True, attention_out_bias=True,
                                         mlp_bias=True, hidden_act="silu")], ids=["relu2", "qwen-like"])
def test_causal(kw):
    m = _model(**kw)
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        ref = m(ids)
        for t in (3, 7, 11):
            changed = ids.clone()
            changed[:, t:] = (changed[:, t:] + 1 + torch.arange(12 - t)) % V
            out = m(changed)
            torch.testing.assert_close(out[:, :t], ref[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, t], ref[:, t])


def test_causal_after_quantization():
    m = _model()
    quantize_model(m, QuantConfig())
    ids = torch.randint(0, V, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 5) % V
    with torch.no_grad():
        torch.testing.assert_close(m(changed)[:, :6], m(ids)[:, :6], rtol=0, atol=1e-6)


def test_gqa_shapes():
    m = _model(num_attention_heads=6, num_key_value_heads=2, head_dim=10)
    attn = m.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (60, 48)
    assert attn.k_proj.weight.shape == (20, 48) and attn.v_proj.weight.shape == (20, 48)
    assert attn.o_proj.weight.shape == (48, 60)
    assert m.model.layers[0].mlp.gate_proj.weight.shape == (80, 48)
    assert m(torch.randint(0, V, (3, 5))).shape == (3, 5, V)


def test_gqa_equals_repeated_kv_heads():
    """GQA with 2 KV heads equals multi-head attention whose K/V weights repeat each KV head 3 times."""
    gqa = _model(num_attention_heads=6, num_key_value_heads=2)
    mha = CausalLM(_cfg(num_attention_heads=6, num_key_value_heads=6)).eval()
    state = gqa.state_dict()
    hd = 8
    for i in range(2):
        for proj in ("k_proj", "v_proj"):
            w = state[f"model.layers.{i}.self_attn.{proj}.weight"].view(2, hd, 48)
            state[f"model.layers.{i}.self_attn.{proj}.weight"] = w.repeat_interleave(3, dim=0).reshape(48, 48)
    mha.load_state_dict(state)
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(mha(ids), gqa(ids), rtol=1e-5, atol=1e-5)


def test_all_ones_mask_equals_no_mask():
    m = _model(attention_bias=True)
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(m(ids, attention_mask=torch.ones(2, 10, dtype=torch.long)), m(ids),
                                   rtol=1e-5, atol=1e-5)


def test_right_padding_matches_unpadded_sequences():
    m = _model()
    ids = torch.randint(0, V, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        out = m(ids, attention_mask=mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0], m(ids[:1])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1, :6], m(ids[1:, :6])[0], rtol=1e-5, atol=1e-5)
        # what sits in the padding does not matter
        other = ids.clone()
        other[1, 6:] = (other[1, 6:] + 3) % V
        torch.testing.assert_close(m(other, attention_mask=mask)[1, :6], out[1, :6], rtol=1e-5, atol=1e-5)


def test_padding_keys_are_masked_for_valid_queries():
    """Left padding: valid tokens never attend to pad keys (positions are not shifted, as in transformers)."""
    m = _model()
    ids = torch.randint(0, V, (1, 8))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = m(ids, attention_mask=mask)
        other = ids.clone()
        other[0, :2] = (other[0, :2] + 7) % V
        torch.testing.assert_close(m(other, attention_mask=mask)[0, 2:], out[0, 2:], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(out).all()


def test_tied_weights_really_tied():
    m = _model(tie_word_embeddings=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    n_unique = sum(p.numel() for p in m.parameters())  # parameters() deduplicates
    assert m.num_parameters() == n_unique
    assert m.num_parameters(exclude_embeddings=True) == n_unique - V * 48
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    m(torch.randint(0, V, (2, 4))).sum().backward()
    before = m.lm_head.weight.detach().clone()
    opt.step()
    assert not torch.equal(m.lm_head.weight, before)
    assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
    # the logits are the final hidden states times the embedding matrix
    ids = torch.randint(0, V, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), m.model(ids) @ m.model.embed_tokens.weight.T, rtol=1e-6, atol=1e-6)


def test_untied_weights_are_separate():
    m = _model(tie_word_embeddings=False)
    assert m.lm_head.weight is not m.model.embed_tokens.weight
    assert m.num_parameters(exclude_embeddings=True) == m.num_parameters() - 2 * V * 48


def test_reset_parameters():
    m = CausalLM(_cfg(attention_bias=True, initializer_range=0.05))
    w = m.model.layers[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.05) < 0.01
    assert torch.equal(m.model.layers[0].self_attn.q_proj.bias, torch.zeros(48))
    assert torch.equal(m.model.norm.weight, torch.ones(48))
    assert isinstance(m.lm_head, nn.Linear) and m.lm_head.bias is None


def test_missing_vocab_size_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        CausalLM(ModelConfig(vocab_size=None))
