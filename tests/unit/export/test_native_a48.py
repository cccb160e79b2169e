"""BitNet a4.8 and v2 through the native export: the runtime runs each projection's scheme (and v2's
Hadamard rotation, and a low-bit KV cache) and its logits equal the training-time forward; the
transformers and GGUF exports refuse what their runtimes cannot compute."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.config import ConfigError
from bitnet_train.export.hf import write_hf
from bitnet_train.export.native import read_native, write_native
from bitnet_train.export.source import load_source
from bitnet_train.infer.model import load_model
from bitnet_train.quant.convert import set_activation_stage
from exporttest_helpers import TOKENIZER, ids
from test_native import assert_logits_close

A48 = {"q_proj": "int4_absmean", "k_proj": "int4_absmean", "v_proj": "int4_absmean", "o_proj": "int8_absmax_top50",
       "gate_proj": "int4_absmean", "up_proj": "int4_absmean", "down_proj": "int8_absmax"}
CASES = {
    "a48": (dict(), dict(activation_schemes=A48), "2bit"),
    "a48-allnorm-base3": (dict(), dict(activation_schemes=A48, norm="all_linear", norm_eps=1e-6), "base3"),
    "v2_a4": (dict(intermediate_size=128), dict(activation_schemes={"*": "int4_absmean"},
                                               hadamard=["o_proj", "down_proj"]), "2bit"),
    "v2_a8-blocks": (dict(intermediate_size=160), dict(hadamard=["o_proj", "down_proj"], hadamard_block=32), "2bit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_native_logits_equal_training_forward(checkpoint, tmp_path, case):
    model, quant, packing = CASES[case]
    src = load_source(checkpoint(model, quant, seed=7 + len(case)), tokenizer=TOKENIZER)
    out = write_native(src, tmp_path / "m.safetensors", packing=packing)
    runtime, _, native = load_model(out)
    layers = native.metadata["layers"]
    schemes = quant.get("activation_schemes", {})
    for name, meta in layers.items():
        leaf = name.rsplit(".", 1)[-1]
        assert meta["activation"] == schemes.get(leaf, schemes.get("*", "int8_absmax"))
        rotated = leaf in quant.get("hadamard", [])
        assert meta["hadamard"] == (quant.get("hadamard_block") or meta["in_features"] if rotated else 0)
        assert native.layers[name].hadamard_block == meta["hadamard"]
    x = ids(len(case))
    with torch.no_grad():
        train, ours = src.model(x), runtime(x)
        assert_logits_close(ours, train)
        # and it is the low-bit model that was exported: its 8-bit first stage computes something else
        set_activation_stage(src.model, False)
        if schemes:
            assert (src.model(x) - train).abs().max() > 50 * (ours - train).abs().max()


def test_kv_bits_travel_with_the_export(checkpoint, tmp_path):
    """A model trained with quant.kv_bits runs with it. (Its logits are not compared with training's here: ternary
    projections make keys and values integer multiples of one factor, so ties on the 3-bit grid are common, and
    integer and float matmuls break them differently.)"""
    src = load_source(checkpoint(dict(), dict(activation_schemes=A48, kv_bits=3)), tokenizer=TOKENIZER)
    runtime, _, native = load_model(write_native(src, tmp_path / "m.safetensors"))
    assert native.quant["kv_bits"] == 3 and runtime.kv_bits == 3 and runtime.new_cache(8).bits == 3
    x = ids(3)
    with torch.no_grad():
        low = runtime(x)
        runtime.set_kv_bits(None)
        assert (runtime(x) - low).abs().max() > 1e-2


def test_unknown_hadamard_block_refused(checkpoint, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model, quant, _ = CASES["v2_a4"]
    good = write_native(load_source(checkpoint(model, quant), tokenizer=TOKENIZER), tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["layers"]["model.layers.0.mlp.down_proj"]["hadamard"] = 48
    meta["config"] = json.dumps(config)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ConfigError, match="Hadamard block 48"):
        read_native(tmp_path / "bad.safetensors")


def test_transformers_and_gguf_refuse_rotations(checkpoint, tmp_path):
    src = load_source(checkpoint(dict(intermediate_size=128), dict(hadamard=["o_proj", "down_proj"])), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="Hadamard transform"):
        write_hf(src, tmp_path / "hf")
    pytest.importorskip("gguf")
    from bitnet_train.export.gguf_format import write_gguf

    src = load_source(checkpoint(dict(hidden_size=256, intermediate_size=256, num_attention_heads=4,
                                      num_key_value_heads=4), dict(hadamard=["o_proj", "down_proj"]), name="g.ckpt"),
                      tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="Hadamard transform"):
        write_gguf(src, tmp_path / "m.gguf")


def test_generate_with_a_low_bit_kv_cache(checkpoint, tmp_path):
    from bitnet_train.generate import parse_args, run

    out = write_native(load_source(checkpoint(dict(), dict(activation_schemes=A48)), tokenizer=TOKENIZER),
                       tmp_path / "m.safetensors")
    texts = {bits: run(parse_args([str(out), "--prompt", "It is a truth", "--max-new-tokens", "6", "--kv-bits", bits]))
             for bits in ("0", "4")}
    assert all(t.startswith("It is a truth") and len(t) > len("It is a truth") for t in texts.values())
    with pytest.raises(ConfigError, match="--kv-bits=1"):
        run(parse_args([str(out), "--prompt", "x", "--kv-bits", "1"]))


def test_transformers_and_gguf_refuse_a48_activations(checkpoint, tmp_path):
    src = load_source(checkpoint(quant=dict(activation_schemes=A48)), tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="int8 absmax only"):
        write_hf(src, tmp_path / "hf")
    pytest.importorskip("gguf")
    from bitnet_train.export.gguf_format import write_gguf

    src = load_source(checkpoint(dict(hidden_size=256, intermediate_size=256, num_attention_heads=4,
                                      num_key_value_heads=4), dict(activation_schemes=A48), name="g.ckpt"),
                      tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match="8 bits only"):
        write_gguf(src, tmp_path / "m.gguf")
