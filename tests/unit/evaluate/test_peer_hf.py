"""Peer cross-check: on a transformers export, our lm-eval model class and lm-eval's own `hf` backend give the
same loglikelihoods (within 1e-4 nats per request, float32) and the same task scores on the shipped tasks."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance

from bitnet_train.evaluate.harness import run_tasks, summarize
from bitnet_train.evaluate.lm import BitnetLM

pytestmark = pytest.mark.usefixtures("dynamo_disabled")
TOL = 1e-4


@pytest.fixture(scope="module")
def pair(sources):
    from lm_eval.models.huggingface import HFLM

    ours = BitnetLM(path=str(sources["transformers"]), batch_size=4)
    theirs = HFLM(pretrained=str(sources["transformers"]), backend="causal", batch_size=4, device="cpu",
                  max_length=64, prefix_token_id=2)  # EOS precedes documents, as training packs them
    return ours, theirs


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_match_hf_backend(pair):
    ours, theirs = pair
    args = [("It is a truth universally acknowledged", " that a single man"),
            ("Emma Woodhouse, handsome, clever, and rich,", " with a comfortable home"),
            ("Sir Walter Elliot, of Kellynch Hall", " was a man"),
            ("x " * 80, " long context, truncated on the left")]
    a = ours.loglikelihood(_requests("loglikelihood", args))
    b = theirs.loglikelihood(_requests("loglikelihood", args))
    for (la, ga), (lb, gb) in zip(a, b):
        assert abs(la - lb) < TOL and ga == gb
    assert len({round(x[0], 3) for x in a}) == len(a)  # distinct values: the comparison can fail
    text = [("The family of Dashwood had long been settled in Sussex. " * 12,)]
    ra, rb = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", text)), \
        theirs.loglikelihood_rolling(_requests("loglikelihood_rolling", text))
    assert abs(ra[0] - rb[0]) < 1e-3 and ra[0] < -10


def test_task_scores_match_hf_backend(pair):
    ours, theirs = pair
    a = summarize(run_tasks(ours, ["austen_cloze", "austen_novel"], limit=6))
    b = summarize(run_tasks(theirs, ["austen_cloze", "austen_novel"], limit=6))
    assert a.keys() == b.keys() == {"austen_cloze", "austen_novel"}
    assert a["austen_novel"]["acc"] == b["austen_novel"]["acc"]
    assert a["austen_novel"]["acc_norm"] == b["austen_novel"]["acc_norm"]
    assert a["austen_cloze"]["acc"] == b["austen_cloze"]["acc"]
    assert a["austen_cloze"]["perplexity"] == pytest.approx(b["austen_cloze"]["perplexity"], rel=1e-4)


def test_generate_until_matches_hf_backend(pair):
    ours, theirs = pair
    args = [("It is a truth universally acknowledged", {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}),
            ("Emma Woodhouse", {"until": ["."], "max_gen_toks": 8, "do_sample": False})]
    assert ours.generate_until(_requests("generate_until", args)) == \
        theirs.generate_until(_requests("generate_until", args))
