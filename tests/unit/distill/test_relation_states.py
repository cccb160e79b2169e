"""Recorded Q/K/V relation states equal the states inside the teacher's own attention (Llama, Qwen2, Qwen3).

The states inside are captured independently of the recorder: transformers' eager attention function is
wrapped so that it keeps the query, key and value it is handed (after Qwen3's q/k norms and RoPE, before
the repetition of K/V heads), which is where BitDistill's reference code takes its relation states."""

from __future__ import annotations

import sys

import pytest
import torch

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.distill.config import BitDistillConfig
from bitnet_train.distill.student import load_teacher_weights, student_model_config
from bitnet_train.distill.teacher import StateRecorder, load_teacher
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import quantize_model
from distill_helpers import make_teacher


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def teacher_dir(request, tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp(f"{request.param}_teacher"), request.param, seed=3)


def _inside_states(teacher, ids):
    """{layer: {q, k, v: [B, S, width]}} as handed to the attention function, by wrapping it."""
    model = teacher.model
    model.set_attn_implementation("eager")
    module = sys.modules[type(model.model.layers[0].self_attn).__module__]
    original, seen = module.eager_attention_forward, {}

    def recording(attention, query, key, value, *args, **kwargs):
        b, _, s, _ = query.shape
        seen[attention.layer_idx] = {n: x.transpose(1, 2).reshape(b, s, -1) for n, x in
                                     (("q", query), ("k", key), ("v", value))}
        return original(attention, query, key, value, *args, **kwargs)

    module.eager_attention_forward = recording
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        module.eager_attention_forward = original
        model.set_attn_implementation("sdpa")
    return seen


def _student(teacher):
    model = CausalLM(student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig()))
    quantize_model(model, QuantConfig(enabled=False))
    load_teacher_weights(model, teacher.model.state_dict())
    return model


def test_teacher_and_student_states_are_those_inside_the_attention(teacher_dir):
    teacher = load_teacher(BitDistillConfig(teacher=str(teacher_dir)))
    ids = torch.randint(4, 4096, (2, 10), generator=torch.Generator().manual_seed(0))
    inside = _inside_states(teacher, ids)
    student = _student(teacher)
    teacher.record([0, 2], ["q", "k", "v"])
    recorder = StateRecorder(student, [0, 2], ["q", "k", "v"])
    with torch.no_grad():
        hooked = teacher(ids).states
        student(ids)
    for layer in (0, 2):
        for name, width in (("q", 64), ("k", 32), ("v", 32)):
            assert hooked[layer][name].shape == (2, 10, width)
            torch.testing.assert_close(hooked[layer][name], inside[layer][name], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(recorder.states[layer][name], inside[layer][name], rtol=1e-4, atol=1e-5)
    # the states-only forward (cached logits) records the same
    early = teacher(ids, logits=False).states
    torch.testing.assert_close(early[2]["q"], inside[2]["q"], rtol=1e-4, atol=1e-5)


def test_pre_rope_option_differs_by_rope_only(teacher_dir):
    """pre_rope: equal to the attention's states at position 0 (RoPE is the identity there), not after."""
    teacher = load_teacher(BitDistillConfig(teacher=str(teacher_dir)))
    ids = torch.randint(4, 4096, (2, 10), generator=torch.Generator().manual_seed(1))
    inside = _inside_states(teacher, ids)
    student = _student(teacher)
    teacher.record([1], ["q", "k", "v"], position="pre_rope")
    recorder = StateRecorder(student, [1], ["q", "k", "v"], position="pre_rope")
    with torch.no_grad():
        hooked = teacher(ids).states
        student(ids)
    for name in "qk":
        torch.testing.assert_close(hooked[1][name][:, 0], inside[1][name][:, 0], rtol=1e-4, atol=1e-5)
        assert (hooked[1][name][:, 1:] - inside[1][name][:, 1:]).abs().max() > 1e-3
        torch.testing.assert_close(recorder.states[1][name], hooked[1][name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hooked[1]["v"], inside[1]["v"], rtol=1e-4, atol=1e-5)
