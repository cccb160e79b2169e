"""Logit parity of CausalLM with tiny random transformers Llama/Qwen2/Qwen3/BitNet models, quantized or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import (
    AutoModelForCausalLM,
    BitNetConfig,
    BitNetForCausalLM,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.integrations.bitnet import AutoBitLinear

from bitnet_train.config import ConfigError, QuantConfig
from bitnet_train.models.decoder import CausalLM
from bitnet_train.models.hf import from_hf_state_dict, load_hf_weights, model_config_from_hf, to_hf_state_dict
from bitnet_train.quant.convert import bitlinear_modules, quantize_model, set_lambda

# transformers' BitNet quantizers are @torch.compile'd: their first call would compile for minutes on CPU.
pytestmark = pytest.mark.usefixtures("dynamo_disabled")

V = 67
SHAPE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
TOL = dict(rtol=1e-5, atol=1e-5)


def _randomize(model: nn.Module, seed: int, only: str | None = None) -> None:
    """Weights N(0, s) with s in [0.05, 0.15] per tensor (scales with many different mantissas), norm weights
    U(0.5, 1.5), biases N(0, 0.2): nothing hides behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only is not None and only not in name:
                continue
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 + 0.1 * torch.rand((), generator=g)))


def _hf(model_cls, config, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config._attn_implementation = "eager"  # an attention path independent of our SDPA call
    hf = model_cls(config).eval()
    _randomize(hf, seed)
    return hf


def _ours(hf_config, hf_state) -> CausalLM:
    m = CausalLM(model_config_from_hf(hf_config)).eval()
    load_hf_weights(m, hf_state)
    return m


def _ids(seed: int = 0, shape=(2, 13)) -> torch.Tensor:
    return torch.randint(3, V, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, mask=None):
    with torch.no_grad():
        if isinstance(model, CausalLM):
            return model(ids, attention_mask=mask)
        return model(input_ids=ids, attention_mask=mask).logits


def _assert_same(ours, ref, **tol):
    diff = (ours - ref).abs().max().item()
    assert ref.abs().max() > 1.0, "reference logits too small to compare meaningfully"
    torch.testing.assert_close(ours, ref, **(tol or TOL), msg=lambda m: f"max abs diff {diff:.3g}\n{m}")


# ---- full precision -----------------------------------------------------------------------------

LLAMA_CASES = {
    "no_bias-tied": dict(attention_bias=False, tie_word_embeddings=True),
    "no_bias-untied": dict(attention_bias=False, tie_word_embeddings=False),
    "bias-tied": dict(attention_bias=True, tie_word_embeddings=True),
    "bias-untied-mlp_bias": dict(attention_bias=True, tie_word_embeddings=False, mlp_bias=True),
}


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_llama_parity(case):
    cfg = LlamaConfig(**SHAPE, **LLAMA_CASES[case])
    hf = _hf(LlamaForCausalLM, cfg)
    ours = _ours(hf.config, hf.state_dict())
    ours_cfg = ours.config
    assert ours_cfg.attention_bias == ours_cfg.attention_out_bias == cfg.attention_bias
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == cfg.tie_word_embeddings
    if not cfg.tie_word_embeddings:
        assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    ids = _ids()
    _assert_same(_logits(ours, ids), _logits(hf, ids))


def test_qwen2_parity_with_qkv_bias():
    cfg = Qwen2Config(**SHAPE, tie_word_embeddings=False)
    hf = _hf(Qwen2ForCausalLM, cfg, seed=1)
    assert hf.model.layers[0].self_attn.q_proj.bias is not None and hf.model.layers[0].self_attn.o_proj.bias is None
    ours = _ours(hf.config, hf.state_dict())
    assert ours.config.attention_bias and not ours.config.attention_out_bias
    ids = _ids(1)
    _assert_same(_logits(ours, ids), _logits(hf, ids))


def test_qwen3_parity_with_qk_norm_and_explicit_head_dim():
    cfg = Qwen3Config(**SHAPE, head_dim=24, tie_word_embeddings=True)
    hf = _hf(Qwen3ForCausalLM, cfg, seed=2)
    assert hf.model.layers[0].self_attn.q_proj.weight.shape == (4 * 24, 64)
    ours = _ours(hf.config, hf.state_dict())
    assert ours.config.qk_norm and ours.config.head_dim == 24
    assert not torch.equal(ours.model.layers[1].self_attn.k_norm.weight, torch.ones(24))
    ids = _ids(2)
    _assert_same(_logits(ours, ids), _logits(hf, ids))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_padded_batch_matches_on_valid_positions(family, side):
    if family == "llama":
        hf = _hf(LlamaForCausalLM, LlamaConfig(**SHAPE, attention_bias=True), seed=3)
    else:
        hf = _hf(Qwen3ForCausalLM, Qwen3Config(**SHAPE, head_dim=24), seed=3)
    ours = _ours(hf.config, hf.state_dict())
    ids = _ids(3, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    if side == "right":
        mask[1, 7:] = 0
        mask[2, 4:] = 0
    else:
        mask[1, :4] = 0
        mask[2, :7] = 0
    ids = ids.masked_fill(mask == 0, 0)  # pad token
    ref, out = _logits(hf, ids, mask), _logits(ours, ids, mask)
    valid = mask.bool()
    assert torch.isfinite(out).all()
    _assert_same(out[valid], ref[valid])


# ---- BitNet b1.58 (transformers' AutoBitLinear, online quantization) -----------------------------

ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


def _reload_quantized(model: nn.Module, path: Path, quantization_config: dict) -> nn.Module:
    model.save_pretrained(path)
    cfg_file = path / "config.json"
    config = json.loads(cfg_file.read_text())
    config["quantization_config"] = quantization_config
    cfg_file.write_text(json.dumps(config))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # transformers quantized every projection, online, and left the head alone
    projections = [m for n, m in hf.named_modules() if n.endswith("_proj")]
    assert projections and all(type(m) is AutoBitLinear and m.online_quant for m in projections)
    assert type(hf.lm_head) is nn.Linear
    return hf


def _bitnet_config(**kw) -> BitNetConfig:
    return BitNetConfig(**{**SHAPE, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, **kw})


@pytest.mark.parametrize("seed", range(3))
def test_bitnet_b158_subln_parity(tmp_path, seed):
    cfg = _bitnet_config()
    fp = BitNetForCausalLM(cfg)
    _randomize(fp, seed)  # sub-norms included
    hf = _reload_quantized(fp, tmp_path, ONLINE)
    ours = CausalLM(model_config_from_hf(hf.config)).eval()
    assert ours.config.hidden_act == "relu2" and ours.config.tie_word_embeddings
    quantize_model(ours, QuantConfig(norm="subln", norm_eps=cfg.rms_norm_eps, int_matmul="off"))
    load_hf_weights(ours, hf.state_dict())
    assert torch.equal(ours.model.layers[1].self_attn.o_proj.input_norm.weight,
                       hf.model.layers[1].self_attn.attn_sub_norm.weight)
    assert torch.equal(ours.model.layers[1].mlp.down_proj.input_norm.weight,
                       hf.model.layers[1].mlp.ffn_sub_norm.weight)
    ids = _ids(seed)
    ref = _logits(hf, ids)
    out = _logits(ours, ids)
    _assert_same(out, ref, rtol=0, atol=0)  # the same ops in the same order: bit-exact
    # the integer forward (quant.int_matmul=auto) rounds once per output, not per product
    for module in bitlinear_modules(ours).values():
        module.int_matmul = "auto"
    _assert_same(_logits(ours, ids), ref, rtol=1e-4, atol=1e-4)
    # not vacuous: without quantization the logits are different
    set_lambda(ours, weight=0.0, activation=0.0)
    assert (_logits(ours, ids) - ref).abs().max() > 1e-2


def test_all_linear_parity_with_transformers_use_rms_norm(tmp_path):
    fp = LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=False))
    _randomize(fp, 4)
    hf = _reload_quantized(fp, tmp_path, {**ONLINE, "use_rms_norm": True, "rms_norm_eps": 1e-6})
    norms = [m.rms_norm for n, m in hf.named_modules() if isinstance(m, AutoBitLinear)]
    assert len(norms) == 14 and all(n is not None and n.variance_epsilon == 1e-6 for n in norms)
    _randomize(hf, 5, only="rms_norm")
    ours = CausalLM(model_config_from_hf(hf.config)).eval()
    quantize_model(ours, QuantConfig(norm="all_linear", norm_eps=1e-6, int_matmul="off"))
    load_hf_weights(ours, hf.state_dict())
    assert torch.equal(ours.model.layers[0].self_attn.k_proj.input_norm.weight,
                       hf.model.layers[0].self_attn.k_proj.rms_norm.weight)
    ids = _ids(4)
    _assert_same(_logits(ours, ids), _logits(hf, ids), rtol=0, atol=0)


def test_bitnet_export_round_trip(tmp_path):
    """Our trained-looking quantized model -> to_hf_state_dict -> transformers BitNet: same logits."""
    cfg = _bitnet_config()
    hf = _reload_quantized(BitNetForCausalLM(cfg), tmp_path, ONLINE)
    ours = CausalLM(model_config_from_hf(hf.config)).eval()
    quantize_model(ours, QuantConfig(norm="subln", norm_eps=cfg.rms_norm_eps, int_matmul="off"))
    _randomize(ours, 6)
    state = ours.state_dict()
    exported = to_hf_state_dict(state)
    assert set(exported) == set(hf.state_dict())
    assert "model.layers.0.self_attn.attn_sub_norm.weight" in exported
    assert "model.layers.0.mlp.ffn_sub_norm.weight" in exported
    hf.load_state_dict(exported, strict=True)
    ids = _ids(6)
    _assert_same(_logits(ours, ids), _logits(hf, ids), rtol=0, atol=0)
    # and back: from_hf_state_dict inverts the renaming, tensor for tensor
    back = from_hf_state_dict(exported)
    assert set(back) == set(state) and all(back[k] is state[k] for k in state)


def test_all_linear_export_names(tmp_path):
    fp = LlamaForCausalLM(LlamaConfig(**SHAPE))
    hf = _reload_quantized(fp, tmp_path, {**ONLINE, "use_rms_norm": True, "rms_norm_eps": 1e-6})
    ours = CausalLM(model_config_from_hf(hf.config)).eval()
    quantize_model(ours, QuantConfig(norm="all_linear", norm_eps=1e-6, int_matmul="off"))
    _randomize(ours, 7)
    exported = to_hf_state_dict(ours.state_dict(), sub_norm_names=False)
    assert set(exported) == set(hf.state_dict())
    hf.load_state_dict(exported, strict=True)
    ids = _ids(7)
    _assert_same(_logits(ours, ids), _logits(hf, ids), rtol=0, atol=0)


def test_full_precision_export_round_trip():
    hf = _hf(Qwen2ForCausalLM, Qwen2Config(**SHAPE, tie_word_embeddings=False), seed=8)
    ours = CausalLM(model_config_from_hf(hf.config)).eval()
    _randomize(ours, 9)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    ids = _ids(8)
    _assert_same(_logits(ours, ids), _logits(hf, ids))


def test_load_hf_weights_refuses_mismatched_checkpoints():
    hf = _hf(LlamaForCausalLM, LlamaConfig(**SHAPE), seed=10)
    ours = CausalLM(model_config_from_hf(hf.config))
    quantize_model(ours, QuantConfig(norm="subln"))  # expects sub-norms the Llama checkpoint lacks
    with pytest.raises(ConfigError, match="missing"):
        load_hf_weights(ours, hf.state_dict())
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="unexpected"):
        load_hf_weights(CausalLM(model_config_from_hf(hf.config)), state)


# ---- model_config_from_hf -----------------------------------------------------------------------

def test_config_mapping_fields():
    llama = model_config_from_hf(LlamaConfig(**SHAPE, attention_bias=True, mlp_bias=True))
    assert (llama.attention_bias, llama.attention_out_bias, llama.mlp_bias, llama.qk_norm) == (True, True, True, False)
    assert llama.hidden_act == "silu" and llama.rope_theta == 10000.0 and llama.num_key_value_heads == 2
    assert llama.rms_norm_eps == 1e-6 and llama.head_dim == 16 and llama.vocab_size == V
    bitnet = model_config_from_hf(_bitnet_config(rope_theta=500000.0))
    assert bitnet.hidden_act == "relu2" and bitnet.rope_theta == 500000.0 and bitnet.rms_norm_eps == 1e-5


@pytest.mark.parametrize("make,pattern", [
    (lambda: GPT2Config(), r"model_type='gpt2'"),
    (lambda: LlamaConfig(**{**SHAPE, "rope_theta": None}, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}), r"llama3"),
    (lambda: LlamaConfig(**SHAPE, rope_scaling={"rope_type": "linear", "factor": 2.0}), r"linear"),
    (lambda: LlamaConfig(**SHAPE, hidden_act="gelu"), r"hidden_act='gelu'"),
    (lambda: Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8), r"sliding-window"),
    (lambda: MistralConfig(**SHAPE, sliding_window=16), r"sliding-window"),
], ids=["gpt2", "llama3-rope", "linear-rope", "gelu", "qwen2-sliding", "mistral-sliding"])
def test_unsupported_configs_refused(make, pattern):
    with pytest.raises(ConfigError, match=pattern):
        model_config_from_hf(make())
