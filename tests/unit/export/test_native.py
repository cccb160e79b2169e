"""The native export: its logits equal the training-time quantized forward (2-bit and base-3 packing,
every norm placement, GQA, biases, excluded layers), and loading refuses damaged files by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bitnet_train.config import ConfigError
from bitnet_train.export.native import read_native, write_native
from bitnet_train.export.source import load_source
from bitnet_train.infer.model import load_model
from exporttest_helpers import TOKENIZER, ids

CASES = {
    "subln-2bit": (dict(), dict(), "2bit"),
    "subln-base3": (dict(), dict(), "base3"),
    "subln-relu2": (dict(hidden_act="relu2"), dict(), "2bit"),  # BitNet b1.58 2B4T's FFN
    "none-silu-untied": (dict(hidden_act="silu", tie_word_embeddings=False), dict(norm="none"), "2bit"),
    "all_linear-bias-qknorm": (dict(attention_bias=True, attention_out_bias=True, qk_norm=True),
                               dict(norm="all_linear", norm_eps=1e-6), "base3"),
    "mlp-excluded": (dict(), dict(exclude=["lm_head", "*embed_tokens*", "*.mlp.*"]), "2bit"),
}


def assert_logits_close(ours, ref):
    """Equal up to float summation order. Integer and float matmuls round differently in the last bits, and an
    activation that lands on a rounding boundary of its int8 grid can then take the neighbouring code: rare,
    local and small. So: most logits agree to 1e-4 of the logit scale, none differs by more than 5e-3 of it."""
    scale = ref.abs().max().item()
    diff = (ours - ref).abs()
    assert scale > 1.0
    assert diff.max().item() < 5e-3 * scale, f"max abs diff {diff.max().item():.3g} (logit scale {scale:.3g})"
    assert (diff > 1e-4 * scale).float().mean().item() < 0.05, "many logits differ: not a rounding effect"
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("case", list(CASES))
def test_native_logits_equal_training_forward(checkpoint, tmp_path, case):
    model, quant, packing = CASES[case]
    src = load_source(checkpoint(model, quant, seed=len(case)), tokenizer=TOKENIZER)
    out = write_native(src, tmp_path / "m.safetensors", packing=packing)
    runtime, tokenizer, native = load_model(out)
    x = ids(len(case))
    with torch.no_grad():
        assert_logits_close(runtime(x), src.model(x))
    assert native.packing == packing and tokenizer.vocab_size == 4096
    assert native.metadata["model"]["hidden_act"] == src.model_cfg.hidden_act
    assert native.metadata["quant"]["norm"] == src.quant_cfg.norm
    acts = {m["activation"] for m in native.metadata["layers"].values()}
    assert acts == {"int8_absmax"}
    if case == "mlp-excluded":
        assert not any(".mlp." in n for n in native.layers) and "model.layers.0.mlp.up_proj.weight" in native.dense


def test_metadata_and_sizes(checkpoint, tmp_path):
    src = load_source(checkpoint(), tokenizer=TOKENIZER)
    p2 = write_native(src, tmp_path / "a.safetensors", packing="2bit", dense_dtype="bfloat16")
    p3 = write_native(src, tmp_path / "b.safetensors", packing="base3", dense_dtype="bfloat16")
    with safe_open(str(p2), framework="pt") as f:
        meta = f.metadata()
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert meta["format"] == "bitnet_train.ternary" and meta["format_version"] == "1"
    config = json.loads(meta["config"])
    assert config["tokenizer"]["kind"] == "sentencepiece" and config["tokenizer"]["eos_id"] == 2
    assert config["layers"]["model.layers.0.self_attn.o_proj"]["input_norm"] is True
    assert packed.shape == (64, 40)  # down_proj: 64 outputs, 160 inputs / 4
    assert p3.stat().st_size < p2.stat().st_size


def _rewrite(path, out, edit_meta=None, edit_tensors=None):
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def _config_edit(fn):
    def edit(meta):
        config = json.loads(meta["config"])
        fn(config)
        meta["config"] = json.dumps(config)
    return edit


@pytest.mark.parametrize("case,match", [
    ("format", "not 'bitnet_train.ternary'"),
    ("version", "format_version 2 is not supported"),
    ("missing", "tensor model.layers.1.mlp.up_proj.weight_scale is missing"),
    ("corrupt", "not ternary codes"),
    ("scheme", "activation scheme 'fp4'"),
    ("shape", "has shape"),
    ("model", "model.hidden_act='gelu'"),
    ("extra", "unexpected tensors"),
    ("scale", "not a positive number"),
])
def test_damaged_files_refused(checkpoint, tmp_path, case, match):
    good = write_native(load_source(checkpoint(), tokenizer=TOKENIZER), tmp_path / "good.safetensors")
    edits = {
        "format": dict(edit_meta=lambda m: m.update(format="other")),
        "version": dict(edit_meta=lambda m: m.update(format_version="2")),
        "missing": dict(edit_tensors=lambda t: t.pop("model.layers.1.mlp.up_proj.weight_scale")),
        "corrupt": dict(edit_tensors=lambda t: t["model.layers.0.self_attn.q_proj.weight_packed"].__setitem__((0, 0), 255)),
        "scheme": dict(edit_meta=_config_edit(lambda c: c["layers"]["model.layers.0.mlp.up_proj"].update(activation="fp4"))),
        "shape": dict(edit_tensors=lambda t: t.update({"model.norm.weight": torch.ones(3)})),
        "model": dict(edit_meta=_config_edit(lambda c: c["model"].update(hidden_act="gelu"))),
        "extra": dict(edit_tensors=lambda t: t.update({"surprise": torch.ones(1)})),
        "scale": dict(edit_tensors=lambda t: t.update({"model.layers.0.mlp.up_proj.weight_scale": torch.tensor([-1.0])})),
    }
    bad = _rewrite(good, tmp_path / "bad.safetensors", **edits[case])
    with pytest.raises(ConfigError, match=match):
        read_native(bad)


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        read_native(tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        read_native(tmp_path / "none.safetensors")


def test_transformers_tokenizer_travels_with_the_export(checkpoint, tmp_path):
    from bitnet_train.export.tokenizer_files import sentencepiece_to_transformers

    sentencepiece_to_transformers(TOKENIZER).save_pretrained(tmp_path / "tok")
    src = load_source(checkpoint(), tokenizer=tmp_path / "tok")
    _, tokenizer, native = load_model(write_native(src, tmp_path / "m.safetensors"))
    assert native.metadata["tokenizer"]["kind"] == "transformers"
    text = ["It is a truth universally acknowledged,  that a single man"]
    assert tokenizer.encode_batch(text) == src.tokenizer.encode_batch(text)
    assert tokenizer.eos_id == src.tokenizer.eos_id == 2
