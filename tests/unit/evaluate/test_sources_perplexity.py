"""Every source kind evaluates the same model the same way, and perplexity / bits per byte match a formula
computed here independently (one full-context forward per short document, log_softmax by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from bitnet_train.evaluate.perplexity import perplexity, windows
from bitnet_train.evaluate.sources import load_evaluable

pytestmark = pytest.mark.usefixtures("dynamo_disabled")
TEXTS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.",
         "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition."]


def _reference(ev, texts):
    nll, n, nbytes = 0.0, 0, 0
    for text in texts:
        ids = [ev.tokenizer.eos_id] + ev.tokenizer.encode_batch([text])[0]
        assert len(ids) <= ev.max_length
        logits = ev.logits(torch.tensor([ids[:-1]]))[0].double()
        logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        nll -= float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        n += len(ids) - 1
        nbytes += len(text.encode())
    return nll / n, nll / math.log(2) / nbytes, n


@pytest.mark.parametrize("kind", ["checkpoint", "run", "native", "transformers"])
def test_every_source_gives_the_same_perplexity(sources, kind):
    ev = load_evaluable(sources[kind])
    assert ev.kind == ("checkpoint" if kind == "run" else kind)
    got = perplexity(ev, TEXTS)
    loss, bpb, n = _reference(load_evaluable(sources["checkpoint"]), TEXTS)
    assert got["tokens"] == n
    assert got["loss"] == pytest.approx(loss, abs=2e-4)
    assert got["bits_per_byte"] == pytest.approx(bpb, abs=2e-4)


def test_windows_cover_every_target_once_with_context():
    ids = list(range(10, 33))
    for length, stride in [(8, 8), (8, 3), (8, 1), (30, 30)]:
        seq, end = [0] + ids, 1
        for inputs, n in windows(ids, 0, length, stride):
            assert len(inputs) <= length and n <= stride
            stop = end + n - 1  # inputs end just before the last target
            assert inputs == seq[stop - len(inputs):stop]
            assert len(inputs) == min(length, stop)  # as much context as the window holds
            end += n
        assert end == len(seq)


def test_sliding_window_uses_context(sources):
    ev = load_evaluable(sources["checkpoint"])
    text = [" ".join(["She was the youngest of the two daughters of a most affectionate father."] * 6)]
    disjoint = perplexity(ev, text, stride=16, max_length=16)
    strided = perplexity(ev, text, stride=4, max_length=16)
    assert disjoint["tokens"] == strided["tokens"] > 64
    assert strided["loss"] != pytest.approx(disjoint["loss"], abs=1e-4)
