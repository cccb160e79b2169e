"""score_windows runs each distinct input once and reads items whose inputs are a prefix of another's from
that row; every item's (sum log p, greedy) equals its own single forward through transformers' Llama."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM

from bitnet_train.evaluate.perplexity import _shared_rows
from bitnet_train.evaluate.perplexity import score_windows


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _multiple_choice_items(rng, questions=5, choices=4):
    """lm-eval's requests for multiple choice: one context, choices of 1-3 tokens (two one-token), the
    choices of a question starting with different tokens."""
    items = []
    for _ in range(questions):
        context = [rng.randrange(1, 97) for _ in range(rng.randrange(17, 40))]
        firsts = rng.sample(range(1, 97), choices)
        for c in range(choices):
            cont = [firsts[c]] + [rng.randrange(1, 97) for _ in range(0 if c < 2 else rng.randrange(1, 3))]
            whole = context + cont
            items.append((whole[:-1], cont))
    return items


def _one_forward_each(model, items):
    out = []
    for inputs, targets in items:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([inputs])).logits[0].double()
        lp = torch.log_softmax(logits[len(inputs) - len(targets):], -1)
        tgt = torch.tensor(targets)
        out.append((float(lp[torch.arange(len(targets)), tgt].sum()), bool((lp.argmax(-1) == tgt).all())))
    return out


def test_shared_rows_runs_each_prefix_once():
    rng = random.Random(0)
    items = _multiple_choice_items(rng)
    rows, row_of = _shared_rows(items)
    # per question: the two one-token choices' inputs (the context) are a prefix of the longer choices'
    # inputs, so only the distinct multi-token inputs run (2 per question here)
    assert len(rows) == 5 * 2
    for (inputs, _), r in zip(items, row_of):
        assert list(rows[r][:len(inputs)]) == inputs
    short = [([1, 2, 3], [3]), ([1, 2], [2]), ([1, 2, 3], [3])]  # shorter than the lookup head: exact matches share
    rows, row_of = _shared_rows(short)
    assert row_of[0] == row_of[2] and len(rows) == 2


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_scores_equal_one_forward_per_item(llama, batch_size):
    rng = random.Random(1)
    items = _multiple_choice_items(rng) + [([5] * 20 + [7, 8], [7, 8]), ([4, 9], [9])]
    calls = []

    def logits_of(batch):
        calls.append(batch.shape[0])
        return llama(input_ids=batch).logits

    got = score_windows(logits_of, items, batch_size=batch_size)
    want = _one_forward_each(llama, items)
    assert sum(calls) == len(_shared_rows(items)[0]) < len(items)
    for (lp, greedy), (ref_lp, ref_greedy) in zip(got, want):
        assert lp == pytest.approx(ref_lp, abs=1e-4)
        assert greedy == ref_greedy
