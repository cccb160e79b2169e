"""init_from: start from a transformers folder or our own 16-bit checkpoint; new norms start at 1."""

from __future__ import annotations

import pytest
import torch
from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from bitnet_train.config import ConfigError, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig, to_dict
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.tasks.init_source import read_init_source
from bitnet_train.quant import bitlinear_modules
from bitnet_train.schedules.phase_in import PhaseInPlan

SHAPE = dict(vocab_size=67, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0)
pytestmark = pytest.mark.usefixtures("dynamo_disabled")


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if "norm" in name else torch.randn(p.shape, generator=g) * 0.1)


def _save(model_cls, config, path, seed=0):
    hf = model_cls(config).eval()
    _randomize(hf, seed)
    hf.save_pretrained(path)
    return hf


def _module(source, **quant) -> PretrainModule:
    return PretrainModule(to_dict(source.model), to_dict(QuantConfig(**quant)), to_dict(OptimConfig()),
                          init_state=source.state).eval()


def _ids():
    return torch.randint(0, SHAPE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_hf_folder_continues_exactly_until_the_transition(tmp_path, family):
    if family == "llama":
        hf = _save(LlamaForCausalLM, LlamaConfig(**SHAPE, tie_word_embeddings=False), tmp_path)
    else:
        hf = _save(Qwen3ForCausalLM, Qwen3Config(**SHAPE, head_dim=16, tie_word_embeddings=True), tmp_path)
    source = read_init_source(str(tmp_path))
    assert source.kind == "hf" and source.tokenizer_dir is None and not source.quantized
    assert source.model.hidden_size == 32 and source.model.qk_norm == (family == "qwen3")
    module = _module(source, norm="all_linear", norm_eps=1e-6, norm_gain_init=1.0)  # as quant=b158_allnorm
    layers = bitlinear_modules(module.model)
    assert len(layers) == 14 and len(module.new_norms) == 14
    assert all(torch.equal(m.input_norm.weight, torch.ones_like(m.input_norm.weight)) for m in layers.values())
    plan = PhaseInPlan.build(ScheduleConfig(at=5, norms="at_transition"), list(layers), 10)
    ids = _ids()
    with torch.no_grad():
        reference = hf(input_ids=ids).logits
        plan.apply(module.model, 4)
        torch.testing.assert_close(module(ids), reference, rtol=1e-5, atol=1e-5)
        plan.apply(module.model, 5)
        assert (module(ids) - reference).abs().max() > 1e-3


def test_bitnet_sub_norms_are_loaded_not_reset(tmp_path):
    hf = _save(BitNetForCausalLM, BitNetConfig(**{**SHAPE, "rms_norm_eps": 1e-5}), tmp_path, seed=1)
    source = read_init_source(str(tmp_path))
    assert source.quantized and source.model.hidden_act == "relu2"
    module = _module(source, norm="subln")
    assert module.new_norms == []
    assert torch.equal(module.model.model.layers[1].mlp.down_proj.input_norm.weight,
                       hf.model.layers[1].mlp.ffn_sub_norm.weight)
    with pytest.raises(ConfigError, match=r"quant\.norm.*subln"):
        _module(source, norm="none")


def test_our_fp_checkpoint(tmp_path):
    torch.manual_seed(0)
    model_cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4)
    fp = PretrainModule(to_dict(model_cfg), to_dict(QuantConfig(enabled=False)), to_dict(OptimConfig()))
    _randomize(fp.model, 2)
    path = tmp_path / "fp.ckpt"
    torch.save({"state_dict": fp.state_dict(), "hyper_parameters": dict(fp.hparams)}, path)
    source = read_init_source(str(path))
    assert source.kind == "checkpoint" and not source.quantized and source.model == model_cfg
    module = _module(source, norm="subln")
    assert len(module.new_norms) == 4  # o_proj and down_proj of two layers
    q = module.model.model.layers[0].self_attn.q_proj
    assert torch.equal(q.weight, fp.model.model.layers[0].self_attn.q_proj.weight)
    assert module.model.lm_head.weight is module.model.model.embed_tokens.weight  # tying survives loading


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_init_source(str(tmp_path / "nope"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="without config.json"):
        read_init_source(str(tmp_path / "folder"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupted"):
        read_init_source(str(bad))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, other)
    with pytest.raises(ConfigError, match="no model hyperparameters"):
        read_init_source(str(other))


def test_shape_mismatch_names_the_key(tmp_path):
    _save(LlamaForCausalLM, LlamaConfig(**SHAPE), tmp_path)
    source = read_init_source(str(tmp_path))
    source.state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.mlp\.up_proj\.weight has shape \(3, 3\)"):
        _module(source)
