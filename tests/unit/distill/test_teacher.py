"""Teacher loading and its errors; stage 1 (the student from the teacher) against transformers' own logits."""

from __future__ import annotations

import json

import pytest
import torch

from bitnet_train.config import ConfigError, ModelConfig, QuantConfig
from bitnet_train.distill.config import AttentionRelationConfig, BitDistillConfig
from bitnet_train.distill.student import load_teacher_weights, student_model_config
from bitnet_train.distill.teacher import StateRecorder, load_teacher, relation_pairs
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.convert import quantize_model
from distill_helpers import make_teacher


def _ids(shape=(2, 12), seed=0):
    return torch.randint(4, 4096, shape, generator=torch.Generator().manual_seed(seed))


def _student(teacher, quant: QuantConfig) -> tuple[CausalLM, list[str]]:
    model = CausalLM(student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig()))
    quantize_model(model, quant)
    return model, load_teacher_weights(model, teacher.model.state_dict())


def test_teacher_is_frozen_in_eval_mode_without_gradients(qwen2_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert next(teacher.model.parameters()).dtype == torch.float32  # CPU: float32 under teacher_dtype=auto
    out = teacher(_ids())
    assert out.logits.shape == (2, 12, 4096) and not out.logits.requires_grad
    assert teacher.num_layers == 3 and teacher.vocab_size == 4096
    bf16 = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher), teacher_dtype="bfloat16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_student_without_quantization_and_new_norms_reproduces_teacher_logits(kind, qwen2_teacher, llama_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher if kind == "qwen2" else llama_teacher)))
    ids = _ids()
    with torch.no_grad():
        expected = teacher(ids).logits
        for quant in (QuantConfig(enabled=False), QuantConfig(norm="none", weight_lambda=0.0, activation_lambda=0.0)):
            student, new_norms = _student(teacher, quant)
            assert new_norms == []
            torch.testing.assert_close(student(ids), expected, rtol=1e-5, atol=1e-5)
        # quantized, it is a different model
        student, _ = _student(teacher, QuantConfig(norm="none"))
        assert (student(ids) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("norms,count", [("subln", 2), ("all_linear", 7)])
def test_stage1_student_is_ternary_with_new_norms_at_one(norms, count, qwen2_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    student, new_norms = _student(teacher, QuantConfig(norm=norms))
    assert len(new_norms) == count * teacher.num_layers
    state = student.state_dict()
    assert all(torch.equal(state[name], torch.ones_like(state[name])) for name in new_norms)
    linears = {n: m for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)}
    assert not isinstance(linears["lm_head"], BitLinear)
    assert sum(isinstance(m, BitLinear) for m in linears.values()) == 7 * teacher.num_layers
    hf = teacher.model.state_dict()
    assert torch.equal(state["model.layers.1.self_attn.q_proj.weight"], hf["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(state["model.layers.1.self_attn.q_proj.bias"], hf["model.layers.1.self_attn.q_proj.bias"])


def test_recorded_states_are_the_same_for_teacher_and_mapped_student(qwen2_teacher):
    """Hooks on transformers' modules and on ours see the same Q/K/V states (as attention uses them)."""
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    student, _ = _student(teacher, QuantConfig(enabled=False))
    teacher.record([0, 2], ["q", "k", "v"])
    recorder = StateRecorder(student, [0, 2], ["q", "k", "v"])
    ids = _ids()
    with torch.no_grad():
        full = teacher(ids)
        student(ids)
    for layer in (0, 2):
        for name, width in (("q", 64), ("k", 32), ("v", 32)):
            assert full.states[layer][name].shape == (2, 12, width)
            torch.testing.assert_close(recorder.states[layer][name], full.states[layer][name], rtol=1e-5, atol=1e-6)
    # states only: the forward stops after layer 2's attention, same states, no logits
    early = teacher(ids, logits=False)
    assert early.logits is None
    for layer in (0, 2):
        for name in "qkv":
            torch.testing.assert_close(early.states[layer][name], full.states[layer][name])
    assert teacher(ids).logits is not None  # a later full forward is not stopped
    recorder.remove()
    student(ids)
    recorder.clear()
    student(ids)
    assert recorder.states == {}


def test_relation_pairs_checks_layers_and_heads(qwen2_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    student, _ = _student(teacher, QuantConfig())
    assert relation_pairs(teacher.model, student, AttentionRelationConfig(layers=[-1], relation_heads=8)) == [(2, 2)]
    assert relation_pairs(teacher.model, student, AttentionRelationConfig(
        layers=[0, -1], student_layers=[1, 1], relation_heads=4)) == [(0, 1), (2, 1)]
    with pytest.raises(ConfigError, match=r"attention\.layers has layer -6, but the model has 3 layers"):
        relation_pairs(teacher.model, student, AttentionRelationConfig(layers=[-6], relation_heads=8))
    with pytest.raises(ConfigError, match=r"relation_heads=48 does not divide the teacher's q_proj width 64"):
        relation_pairs(teacher.model, student, AttentionRelationConfig(layers=[0], relation_heads=48))
    with pytest.raises(ConfigError, match=r"relation_heads=64 does not divide the teacher's k_proj width 32"):
        relation_pairs(teacher.model, student, AttentionRelationConfig(layers=[0], relation_heads=64))
    with pytest.raises(ConfigError, match=r"relation_heads=3 does not divide"):
        relation_pairs(teacher.model, student, AttentionRelationConfig(layers=[0], relation_heads=3))


def test_student_from_config_takes_the_teacher_vocabulary(qwen2_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    distill = BitDistillConfig(teacher="t", student="config")
    cfg = student_model_config(teacher, distill, ModelConfig(hidden_size=32, num_attention_heads=2))
    assert cfg.vocab_size == 4096 and cfg.hidden_size == 32
    with pytest.raises(ConfigError, match=r"model\.vocab_size=100 differs from the teacher's vocabulary \(4096\)"):
        student_model_config(teacher, distill, ModelConfig(vocab_size=100))


# ---- bad teachers ---------------------------------------------------------------------------------

def _error(teacher: str, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        load_teacher(BitDistillConfig(teacher=teacher, **kw))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_teacher_path(tmp_path):
    assert "does not exist" in _error(str(tmp_path / "nowhere"))


def test_teacher_not_set():
    with pytest.raises(ConfigError, match=r"distill\.teacher is not set"):
        BitDistillConfig()


def test_teacher_file_or_folder_that_is_not_a_model(tmp_path):
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert "tools/gguf_to_hf.py" in _error(str(gguf))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in _error(str(empty))
    (empty / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert "no weights" in _error(str(empty))


def test_remote_code_only_when_asked(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mything", "auto_map": {
        "AutoConfig": "configuration_mything.MyConfig", "AutoModelForCausalLM": "modeling_mything.MyModel"}}))
    (folder / "model.safetensors").write_bytes(b"")
    assert "distill.trust_remote_code=true" in _error(str(folder))


def test_architecture_the_student_cannot_mirror(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)).save_pretrained(
        tmp_path / "gpt2")
    teacher = load_teacher(BitDistillConfig(teacher=str(tmp_path / "gpt2")))
    with pytest.raises(ConfigError, match=r"model_type='gpt2' cannot be mirrored"):
        student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig())


def test_sliding_window_teacher_is_refused(tmp_path):
    folder = make_teacher(tmp_path / "sw", "qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0)
    teacher = load_teacher(BitDistillConfig(teacher=str(folder)))
    with pytest.raises(ConfigError, match="sliding-window"):
        student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig())
