"""Prompt/answer layout: labels cover the answer only, right padding, truncation, loading and its errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bitnet_train.config import ConfigError
from bitnet_train.data import CausalLMDataModule
from bitnet_train.data.examples import cut_example, encode_pairs

from datatest_helpers import CharTokenizer

PAD = 3


def test_cut_example_masks_prompt_and_padding():
    ids = np.array([10, 11, 12, 20, 21, 2])  # prompt 10 11 12, answer 20 21, EOS 2
    item = cut_example(ids, 3, seq_len=8, pad_id=PAD)
    assert item["input_ids"].tolist() == [10, 11, 12, 20, 21, 2, PAD, PAD]
    assert item["labels"].tolist() == [-100, -100, 20, 21, 2, -100, -100, -100]
    assert item["attention_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]


def test_cut_example_truncates_prompt_first_then_answer():
    ids = np.array([10, 11, 12, 13, 20, 21, 2])
    item = cut_example(ids, 4, seq_len=4, pad_id=PAD)  # 5 tokens fit: prompt keeps its last 2
    assert item["input_ids"].tolist() == [12, 13, 20, 21]
    assert item["labels"].tolist() == [-100, 20, 21, 2]
    item = cut_example(np.array([10, 11, 20, 21, 22, 23, 2]), 2, seq_len=3, pad_id=PAD)  # answer too long
    assert item["input_ids"].tolist() == [11, 20, 21] and item["labels"].tolist() == [20, 21, 22]
    item = cut_example(np.array([20, 21, 2]), 0, seq_len=4, pad_id=PAD)  # no prompt
    assert item["labels"].tolist() == [21, 2, -100, -100] and item["attention_mask"].tolist() == [1, 1, 1, 0]


def test_encode_pairs_appends_eos_and_hashes_both_fields():
    ids, prompt_len, hashes = encode_pairs(["ab", None], ["c", "de"], CharTokenizer())
    assert ids == [[97, 98, 99, 0], [100, 101, 0]] and prompt_len == [2, 0]
    assert len(set(hashes)) == 2
    assert encode_pairs(["a"], ["bc"], CharTokenizer())[2] != encode_pairs(["ab"], ["c"], CharTokenizer())[2]


@pytest.mark.parametrize("prompt,answer", [
    ("Passage: It is a truth.\nWhich Jane Austen novel is this passage from?\nAnswer:", " Pride and Prejudice"),
    ("Question: who? Answer: ", "Emma"),  # trailing space moves to the answer, as lm-eval moves it
    ("x", ""),
])
def test_answer_tokens_are_those_lm_eval_scores(prompt, answer):
    """The answer's tokens are lm-eval's continuation tokens for the same context and continuation (its own
    TemplateLM._encode_pair), not the answer tokenized alone: with the shipped tokenizer " Pride" alone
    starts with other pieces than after "Answer:"."""
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM

    from bitnet_train.data.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    ids, prompt_len, _ = encode_pairs([prompt], [answer], tok)
    lm = SimpleNamespace(backend="causal", tok_encode=lambda s, **kw: tok.encode_batch([s])[0])
    context_enc, continuation_enc = TemplateLM._encode_pair(lm, prompt, answer) if answer else ([], [])
    if answer:
        assert ids[0][:prompt_len[0]] == context_enc and ids[0][prompt_len[0]:-1] == continuation_enc
    assert ids[0][-1] == tok.eos_id
    if answer.startswith(" Pride"):
        assert continuation_enc != tok.encode_batch([answer])[0]  # what the layout used to train on


RECORDS = [{"question": f"Q{i}: what is {i} plus {i}?", "reply": f"It is {2 * i}.", "id": i} for i in range(60)]


def _module(make_cfg, path, **kw) -> CausalLMDataModule:
    cfg = make_cfg(files=str(path), layout="prompt_answer", prompt_field="question", answer_field="reply",
                   seq_len=40, val_fraction=0.2, **kw)
    dm = CausalLMDataModule(cfg)
    dm._tokenizer = CharTokenizer()
    dm.setup()
    return dm


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_datamodule_builds_answer_only_examples(tmp_path, make_cfg, kind):
    path = tmp_path / f"task.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    else:
        pq.write_table(pa.Table.from_pylist(RECORDS), path)
    dm = _module(make_cfg, path)
    assert len(dm.train_blocks) + len(dm.val_blocks) == 60 and len(dm.val_blocks) > 0
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask"} and batch["input_ids"].shape == (4, 40)
    replies = {r["reply"]: r for r in RECORDS}
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        text = "".join(chr(int(i)) if i > 0 else "|" for i in ids[mask.bool()])
        answer = "".join(chr(int(t)) if t > 0 else "|" for t in labels[labels != -100])
        assert answer.endswith("|") and answer[:-1] in replies  # the answer and EOS, nothing of the prompt
        question = replies[answer[:-1]]["question"]
        body = text[:-1] if text.endswith("|") else text  # the last input is EOS unless the record was cut
        assert body.endswith(answer[:-1])
        kept = body[:len(body) - len(answer) + 1]  # what is left of the prompt: its end
        assert question.endswith(kept) and len(kept) >= 1
        assert (ids[~mask.bool()] == 0).all()  # CharTokenizer's pad id
    stats = dm.stats()
    assert stats["train_documents"] == len(dm.train_blocks)
    assert dm.unigram_perplexity() > 1


def test_prompt_answer_errors(tmp_path, make_cfg):
    plain = tmp_path / "task.txt"
    plain.write_text("just text\n")
    with pytest.raises(ConfigError, match="plain text"):
        _module(make_cfg, plain)
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps({"question": "q", "answer": "a"}) + "\n" for _ in range(3)))
    with pytest.raises(ConfigError, match=r"'reply' is not a column"):
        _module(make_cfg, path)
    cfg = make_cfg(layout="prompt_answer")
    with pytest.raises(ConfigError, match="data.layout=prompt_answer needs task records"):
        CausalLMDataModule(cfg).setup()


def test_examples_need_no_attention_mask_in_a_causal_model():
    """Right padding: logits of real positions are the same with and without the padding after them."""
    from bitnet_train.config import ModelConfig
    from bitnet_train.models.decoder import CausalLM

    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4)).eval()
    item = cut_example(np.array([10, 11, 12, 20, 21, 0]), 3, seq_len=10, pad_id=PAD)
    with torch.no_grad():
        padded = model(item["input_ids"][None])[0, :6]
        alone = model(item["input_ids"][None, :6])[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
