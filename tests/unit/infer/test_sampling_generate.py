"""Greedy, temperature and top-p choices, and the generation loop (cache, EOS, lengths)."""

from __future__ import annotations

import torch

from bitnet_train.infer.generate import generate
from bitnet_train.infer.sampling import sample_next, top_p_filter
from bitnet_train.config import ModelConfig
from bitnet_train.models.decoder import CausalLM


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.testing.assert_close(top_p_filter(probs, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(top_p_filter(probs, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(top_p_filter(probs, 1.0), probs)
    shuffled = probs[:, [2, 0, 3, 1]]
    torch.testing.assert_close(top_p_filter(shuffled, 0.7), torch.tensor([[0.0, 0.625, 0.0, 0.375]]))


def test_sample_next():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    assert sample_next(logits).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, temperature=1.0, generator=g) for _ in range(400)])
    assert set(draws[:, 0].tolist()) == {0, 1, 2}  # all tokens reachable at temperature 1
    g = torch.Generator().manual_seed(0)
    nucleus = torch.stack([sample_next(logits, temperature=1.0, top_p=0.5, generator=g) for _ in range(50)])
    assert set(nucleus[:, 0].tolist()) == {1}


def _model():
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, initializer_range=0.2)).eval()


def test_greedy_generation_equals_argmax_of_full_forward():
    model = _model()
    prompt = torch.tensor([[3, 7, 11]])
    out = generate(model, prompt, max_new_tokens=6)
    assert out.shape == (1, 9) and torch.equal(out[:, :3], prompt)
    for t in range(3, 9):  # each new token is the argmax given everything before it
        with torch.no_grad():
            assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_generation_stops_at_eos_and_is_seeded():
    model = _model()
    prompt = torch.tensor([[3, 7, 11]])
    greedy = generate(model, prompt, max_new_tokens=5)
    eos = int(greedy[0, 4])
    stopped = generate(model, prompt, max_new_tokens=5, eos_id=eos)
    assert stopped[0, -1] == eos and stopped.shape[1] <= 5
    a = generate(model, prompt, 8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(5))
    b = generate(model, prompt, 8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
