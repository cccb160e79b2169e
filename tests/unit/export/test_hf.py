"""The transformers export loads with AutoModelForCausalLM as BitNet / Llama / Qwen2 / Qwen3 with transformers'
packed BitLinear, and training-time forward == native export forward == transformers forward."""

from __future__ import annotations

import gzip

import pytest
import torch
import torch.nn as nn

from bitnet_train.config import ConfigError
from bitnet_train.export.hf import write_hf
from bitnet_train.export.native import write_native
from bitnet_train.export.source import load_source
from bitnet_train.export.ternary import ternary_layers
from bitnet_train.infer.model import load_model
from bitnet_train.paths import shipped_dir
from exporttest_helpers import TOKENIZER, ids
from test_native import assert_logits_close

pytestmark = pytest.mark.usefixtures("dynamo_disabled")

CASES = {
    "bitnet": (dict(), dict(), "BitNetForCausalLM"),  # the default model's SiLU FFN
    "bitnet-relu2": (dict(hidden_act="relu2"), dict(), "BitNetForCausalLM"),  # BitNet b1.58 2B4T's FFN
    "llama-none-silu": (dict(hidden_act="silu", tie_word_embeddings=False, attention_bias=True,
                             attention_out_bias=True), dict(norm="none"), "LlamaForCausalLM"),
    "llama-all_linear": (dict(), dict(norm="all_linear", norm_eps=1e-6), "LlamaForCausalLM"),
    "qwen3-all_linear": (dict(qk_norm=True), dict(norm="all_linear", norm_eps=1e-6), "Qwen3ForCausalLM"),
    "qwen2-qkv_bias": (dict(attention_bias=True, attention_out_bias=False, hidden_act="silu"), dict(norm="none"),
                       "Qwen2ForCausalLM"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_native_transformers_agree(checkpoint, tmp_path, case):
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitnet import BitLinear

    model, quant, cls = CASES[case]
    src = load_source(checkpoint(model, quant, seed=3), tokenizer=TOKENIZER)
    hf_dir = write_hf(src, tmp_path / "hf")
    runtime, _, _ = load_model(write_native(src, tmp_path / "m.safetensors"))
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == cls
    projections = [m for n, m in hf.named_modules() if n.endswith("_proj")]
    assert len(projections) == 14 and all(type(m) is BitLinear for m in projections)
    assert type(hf.lm_head) is nn.Linear
    x = ids(7)
    with torch.no_grad():
        train, native, theirs = src.model(x), runtime(x), hf(input_ids=x).logits
    assert_logits_close(native, train)
    assert_logits_close(theirs, train)
    assert_logits_close(theirs, native)
    # the packed bytes are the ternary codes transformers unpacks
    layer = ternary_layers(src.model)["model.layers.1.mlp.down_proj"]
    from transformers.integrations.bitnet import unpack_weights
    assert torch.equal(unpack_weights(hf.model.layers[1].mlp.down_proj.weight, torch.float32), layer.codes.float())


def test_tokenizer_folder_matches_sentencepiece(checkpoint, tmp_path):
    from transformers import AutoTokenizer

    src = load_source(checkpoint(), tokenizer=TOKENIZER)
    tok = AutoTokenizer.from_pretrained(write_hf(src, tmp_path / "hf"))
    text = gzip.open(shipped_dir() / "austen" / "persuasion.txt.gz", "rt").read()
    paragraphs = text.split("\n\n")[:1500] + ["  two spaces", " lead", "tail  ", "<s> not special </s>", "£ ü 🙂", ""]
    ours = src.tokenizer.encode_batch(paragraphs)
    theirs = tok(paragraphs, add_special_tokens=False)["input_ids"]
    assert ours == theirs
    assert [tok.decode(t) for t in theirs[:200]] == [src.tokenizer.decode(t) for t in ours[:200]]
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (2, 1, 3)


def test_refusals(checkpoint, tmp_path):
    src = load_source(checkpoint(dict(qk_norm=True)), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="BitNetForCausalLM"):
        write_hf(src, tmp_path / "a")
    src = load_source(checkpoint(dict(num_attention_heads=2, num_key_value_heads=1, head_dim=34), dict(norm="none")),
                      tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="multiple of 4"):
        write_hf(src, tmp_path / "b")
    src = load_source(checkpoint(), tokenizer=TOKENIZER)
    src.model.model.layers[0].self_attn.o_proj.activation_scheme = "int8_absmax_top50"  # a4.8's o_proj input
    with pytest.raises(ConfigError, match="int8_absmax_top50"):
        write_hf(src, tmp_path / "c")
