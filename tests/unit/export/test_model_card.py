"""The transformers export is Hub-ready: a model card whose YAML metadata huggingface_hub parses
(architecture, quantization, bits per weight, tokens trained, the run's evaluation figures), a
generation config transformers loads, and the tokenizer beside the weights."""

from __future__ import annotations

import json

import pytest

from bitnet_train.export.hf import write_hf
from bitnet_train.export.source import load_source
from exporttest_helpers import TOKENIZER

pytest.importorskip("transformers")


def test_model_card_generation_config_tokenizer(checkpoint, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer, GenerationConfig

    ckpt = checkpoint()
    (ckpt.parent.parent / "metrics.json").write_text(json.dumps(
        {"steps": 400, "tokens_seen": 3276800, "val_loss": 4.25, "val_perplexity": 70.1, "train_loss": None}))
    out = write_hf(load_source(ckpt, tokenizer=TOKENIZER), tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["architecture"] == "BitNetForCausalLM"
    assert meta["quantization"]["scheme"] == "BitNet b1.58" and meta["quantization"]["bits_per_weight"] == 2.0
    assert abs(meta["quantization"]["bits_per_weight_information"] - 1.585) < 1e-3
    assert meta["tokens_trained"] == 3276800
    assert meta["evaluation"] == {"val_loss": 4.25, "val_perplexity": 70.1, "steps": 400}
    assert "3,276,800 tokens" in card.text
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == 2 and gen.do_sample is False
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == 2 and len(tok) == 4096


def test_model_card_without_metrics(checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    out = write_hf(load_source(checkpoint(), tokenizer=TOKENIZER), tmp_path / "hf")
    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert "tokens_trained" not in meta and "evaluation" not in meta  # the checkpoint records no tokens_seen
