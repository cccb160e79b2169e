"""Before the transition the forward pass is exactly the unquantized model; at the transition it is not.

Two documented semantics for the extra input norms (schedules/phase_in.py):
  at_transition  before T the network is the plain decoder (no extra norms): equal to our
                 unquantized CausalLM bit for bit, and to transformers' Llama;
  always         the norms are part of the network from step 0: with subln the 16-bit stage equals
                 transformers' BitNetForCausalLM without quantization (attn_sub_norm, ffn_sub_norm).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM

from bitnet_train.config import QuantConfig, ScheduleConfig, from_mapping
from bitnet_train.models.decoder import CausalLM
from bitnet_train.models.hf import load_hf_weights, model_config_from_hf, to_hf_state_dict
from bitnet_train.quant import bitlinear_modules, quantize_model
from bitnet_train.schedules.phase_in import PhaseInPlan

SHAPE = dict(vocab_size=61, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=True)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _ids() -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0))


def _plan(model, at=7, total=20, **kw) -> PhaseInPlan:
    cfg = from_mapping(ScheduleConfig, "schedule", {"at": at, **kw})
    return PhaseInPlan.build(cfg, list(bitlinear_modules(model)), total)


def _llama_pair(seed: int = 0):
    hf = LlamaForCausalLM(LlamaConfig(**SHAPE, hidden_act="silu", rms_norm_eps=1e-6)).eval()
    _randomize(hf, seed)
    ours = CausalLM(model_config_from_hf(hf.config)).eval()
    load_hf_weights(ours, hf.state_dict())
    return hf, ours


@pytest.mark.parametrize("norm", ["subln", "all_linear", "none"])
def test_before_transition_equals_unquantized_model_exactly(norm):
    hf, plain = _llama_pair()
    model = copy.deepcopy(plain)
    quantize_model(model, QuantConfig(norm=norm, norm_eps=1e-6))
    plan = _plan(model, at=7, norms="at_transition", weight={"shape": "linear", "length": 3})
    ids = _ids()
    with torch.no_grad():
        reference = plain(ids)
        for step in (0, 3, 6):
            plan.apply(model, step)
            assert torch.equal(model(ids), reference), f"step {step} differs from the unquantized model"
        torch.testing.assert_close(reference, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        plan.apply(model, 7)  # the configured transition step: quantized (and norms in)
        assert all(0 < layer.weight_lambda < 1 for layer in bitlinear_modules(model).values())
        assert (model(ids) - reference).abs().max() > 1e-3


def test_norms_are_untouched_before_the_transition():
    _, plain = _llama_pair(1)
    quantize_model(plain, QuantConfig(norm="all_linear"))
    plan = _plan(plain, norms="at_transition")
    norms = [m.input_norm for m in bitlinear_modules(plain).values()]
    initial = [n.weight.detach().clone() for n in norms]
    plan.apply(plain, 6)
    plain(_ids()).float().square().mean().backward()
    assert norms and all(n.weight.grad is None and torch.equal(n.weight, w) for n, w in zip(norms, initial))
    plan.apply(plain, 7)
    assert all(m.input_norm_active for m in bitlinear_modules(plain).values())


@pytest.mark.usefixtures("dynamo_disabled")
def test_always_norms_equal_transformers_bitnet_in_full_precision():
    cfg = BitNetConfig(**SHAPE, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    ours = CausalLM(model_config_from_hf(cfg)).eval()
    quantize_model(ours, QuantConfig(norm="subln", norm_eps=1e-5))
    _randomize(ours, 3)
    ref = BitNetForCausalLM(cfg).eval()  # no quantization_config: plain linears with sub-norms
    result = ref.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}  # tied head
    assert torch.equal(ref.model.layers[1].self_attn.attn_sub_norm.weight,
                       ours.model.layers[1].self_attn.o_proj.input_norm.weight)
    plan = _plan(ours, at=0.5, total=40, norms="always")
    assert plan.transition_step == 20
    ids = _ids()
    with torch.no_grad():
        reference = ref(input_ids=ids).logits
        plan.apply(ours, 19)
        torch.testing.assert_close(ours(ids), reference, rtol=1e-5, atol=1e-5)
        plan.apply(ours, 20)
        assert (ours(ids) - reference).abs().max() > 1e-3


def test_fp_stage_skips_the_quantizers():
    _, model = _llama_pair(2)
    quantize_model(model, QuantConfig(norm="none"))
    layer = model.model.layers[0].mlp.up_proj
    layer.set_lambda(0.0, 0.0)
    x = torch.randn(3, 64) * 50
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
    layer.set_lambda(0.0, 1.0)  # activations alone quantized: not the plain linear any more
    assert not torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
