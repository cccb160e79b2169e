"""The GGUF export, read back with gguf's own reader: every ternary projection dequantizes to our
ternary weights times their scales (exactly for arch bitnet; scale rounded to fp16 for arch llama,
whose q/k rows are permuted for llama.cpp's RoPE), with llama.cpp's names, metadata and tokenizer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sentencepiece as spm
import torch

from bitnet_train.config import ConfigError
from bitnet_train.export.gguf_format import _permute, write_gguf
from bitnet_train.export.source import load_source
from bitnet_train.export.ternary import ternary_layers
from exporttest_helpers import TOKENIZER

gguf = pytest.importorskip("gguf")

GGUF_SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def _read(path):
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    fields = {name: f for name, f in reader.fields.items()}
    return reader, tensors, fields


def _value(field):
    return field.contents()


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
def test_bitnet_arch_reads_back_exactly(checkpoint, tmp_path, qtype):
    src = load_source(checkpoint(GGUF_SHAPE), tokenizer=TOKENIZER)
    path = write_gguf(src, tmp_path / "m.gguf", qtype=qtype)
    _, tensors, fields = _read(path)
    assert _value(fields["general.architecture"]) == "bitnet"
    assert _value(fields["bitnet.block_count"]) == 2 and _value(fields["bitnet.attention.head_count_kv"]) == 2
    assert _value(fields["general.file_type"]) == (37 if qtype == "tq2_0" else 36)
    for name, layer in ternary_layers(src.model).items():
        bid, rest = name.split(".")[2], ".".join(name.split(".")[3:])
        t = tensors[f"blk.{bid}.{NAMES[rest]}.weight"]
        assert t.tensor_type.name == qtype.upper()
        deq = gguf.quants.dequantize(t.data, t.tensor_type)
        scale = tensors[f"blk.{bid}.{NAMES[rest]}.scale"].data
        assert np.array_equal(deq * scale, (layer.codes.float() * layer.scale).numpy()), name
    norm = src.model.model.layers[1].self_attn.o_proj.input_norm.weight.detach().numpy()
    assert np.array_equal(tensors["blk.1.attn_sub_norm.weight"].data, norm)
    assert np.array_equal(tensors["token_embd.weight"].data, src.model.model.embed_tokens.weight.detach().numpy())
    assert "output.weight" not in tensors  # tied head
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    tokens = fields["tokenizer.ggml.tokens"]
    assert [bytes(tokens.parts[i]).decode() for i in tokens.data[:300]] == [sp.id_to_piece(i) for i in range(300)]
    assert _value(fields["tokenizer.ggml.model"]) == "llama" and _value(fields["tokenizer.ggml.eos_token_id"]) == 2


def test_llama_arch_folds_scales_and_permutes_qk(checkpoint, tmp_path):
    src = load_source(checkpoint({**GGUF_SHAPE, "hidden_act": "silu", "tie_word_embeddings": False},
                                 dict(norm="none")), tokenizer=TOKENIZER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silu: no activation warning
        path = write_gguf(src, tmp_path / "m.gguf", dense_dtype="float16")
    _, tensors, fields = _read(path)
    assert _value(fields["general.architecture"]) == "llama"
    layers = ternary_layers(src.model)
    for name, layer in layers.items():
        bid, rest = name.split(".")[2], ".".join(name.split(".")[3:])
        t = tensors[f"blk.{bid}.{NAMES[rest]}.weight"]
        expect = layer.codes.float() * layer.scale.half().float()
        if rest in ("self_attn.q_proj", "self_attn.k_proj"):
            expect = _permute(expect, 4 if rest.endswith("q_proj") else 2)
        assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type), expect.numpy()), name
        assert f"blk.{bid}.{NAMES[rest]}.scale" not in tensors
    assert tensors["output.weight"].data.dtype == np.float16


def test_permute_matches_llama_rope_layout():
    # rotate-half pairs (i, i + d/2) become adjacent rows (2i, 2i + 1) within each head
    w = torch.arange(8.0)[:, None]  # one head of dim 8
    assert _permute(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("model,quant,match", [
    ({**GGUF_SHAPE, "hidden_act": "relu2"}, dict(), "relu2-gated.*SiLU-gated.*--format hf or native.*hidden_act=silu"),
    (GGUF_SHAPE, dict(norm="all_linear"), "every linear"),
    ({**GGUF_SHAPE, "tie_word_embeddings": False}, dict(), "untied head"),
    ({**GGUF_SHAPE, "qk_norm": True}, dict(norm="none"), "q/k norms"),
])
def test_refusals(checkpoint, tmp_path, model, quant, match):
    src = load_source(checkpoint(model, quant), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match=match):
        write_gguf(src, tmp_path / "m.gguf")


def test_transformers_tokenizer_folder(checkpoint, tmp_path):
    from bitnet_train.export.tokenizer_files import sentencepiece_to_transformers

    sentencepiece_to_transformers(TOKENIZER).save_pretrained(tmp_path / "tok")
    src = load_source(checkpoint(GGUF_SHAPE), tokenizer=tmp_path / "tok")
    path = write_gguf(src, tmp_path / "m.gguf")
    _, _, fields = _read(path)
    tokens = fields["tokenizer.ggml.tokens"]
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    assert [bytes(tokens.parts[i]).decode() for i in tokens.data] == [sp.id_to_piece(i) for i in range(4096)]
    assert _value(fields["tokenizer.ggml.model"]) == "llama"


@pytest.mark.parametrize("arch_quant", [dict(), dict(norm="none")], ids=["bitnet", "llama"])
def test_any_shape_q8_0_and_f16_fallback_is_exact(checkpoint, tmp_path, arch_quant):
    # hidden 576 (a SmolLM2-sized student): rows of 576 are Q8_0; FFN 200 (not a multiple of 32): F16
    shape = dict(hidden_size=576, intermediate_size=200, num_attention_heads=9, num_key_value_heads=3,
                 tie_word_embeddings=True)
    src = load_source(checkpoint(shape, arch_quant), tokenizer=TOKENIZER)
    lines = []
    path = write_gguf(src, tmp_path / "m.gguf", report=lines.append)
    _, tensors, _ = _read(path)
    bitnet = not arch_quant
    for name, layer in ternary_layers(src.model).items():
        bid, rest = name.split(".")[2], ".".join(name.split(".")[3:])
        t = tensors[f"blk.{bid}.{NAMES[rest]}.weight"]
        assert t.tensor_type.name == {576: "Q8_0", 200: "F16"}[layer.in_features], name
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if bitnet:
            deq = deq * tensors[f"blk.{bid}.{NAMES[rest]}.scale"].data
            expect = layer.codes.float() * layer.scale
        else:
            expect = layer.codes.float() * layer.scale.half().float()
            if rest in ("self_attn.q_proj", "self_attn.k_proj"):
                expect = _permute(expect, 9 if rest.endswith("q_proj") else 3)
        assert np.array_equal(deq, expect.numpy()), name
    # Q8_0 is 8.5 bits, F16 16, TQ2_0 2.0625 per weight: the report states the cost
    assert len(lines) == 1 and "Q8_0" in lines[0] and "F16" in lines[0] and "MiB against" in lines[0]
