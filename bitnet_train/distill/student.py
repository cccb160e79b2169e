"""Stage 1 of BitDistill, modeling refinement: the ternary student built from the teacher.

The teacher's transformers model is mapped into our own decoder (models/decoder.py) rather than
converted in place, for three reasons:
  - one model everywhere: the student that trains is the module that the exporters, kernels and
    checkpoints of this project read, with the same parameter names as every other run;
  - it is checked: with quantization off our decoder reproduces Llama/Qwen2/Qwen3 logits
    (tests/unit/models/test_parity_hf.py, and again for the student in tests/unit/distill), so the
    mapping cannot silently change the model;
  - quantization stays one module swap (quant/convert.py) that places the new norms the same way for
    every architecture, instead of patching each transformers attention and MLP class.
The price: only architectures the decoder mirrors can be students; `model_config_from_hf` names what it
cannot mirror (sliding windows, rope scaling, ...).

Then every linear except lm_head becomes a BitLinear (the `quant` section, embeddings and lm_head
excluded) and the extra RMSNorms are placed per `distill.norms` (subln: before o_proj and down_proj;
all_linear: before every quantized linear); they start at 1, so before quantization the student is the
teacher. With `distill.student=config` the student is instead a fresh model shaped by `model`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from bitnet_train.config import ConfigError, ModelConfig
from bitnet_train.distill.config import BitDistillConfig
from bitnet_train.distill.teacher import Teacher
from bitnet_train.models.hf import from_hf_state_dict, model_config_from_hf


def student_model_config(teacher: Teacher, distill: BitDistillConfig, model: ModelConfig) -> ModelConfig:
    """The student's shape: the teacher's (BitDistill), or `model` with the teacher's vocabulary."""
    if distill.student == "teacher":
        return model_config_from_hf(teacher.config)
    vocab = teacher.vocab_size
    if model.vocab_size is not None and model.vocab_size != vocab:
        raise ConfigError(f"model.vocab_size={model.vocab_size} differs from the teacher's vocabulary ({vocab}); "
                          "logit distillation needs the same vocabulary: set model.vocab_size=null")
    return dataclasses.replace(model, vocab_size=vocab)


@torch.no_grad()
def load_teacher_weights(student: nn.Module, teacher_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the teacher's weights into a (quantized) student by name; return the new norms left at 1.

    Every student tensor must come from the teacher except the BitLinear input norms that stage 1
    adds; every teacher tensor must have a place in the student. Anything else is a ConfigError."""
    state = from_hf_state_dict(teacher_state)
    ours = student.state_dict()
    tied = getattr(student.config, "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    new_norms = sorted(k for k in ours if k not in state and ".input_norm." in k)
    missing = sorted(k for k in ours if k not in state and k not in new_norms and not (tied and k == "lm_head.weight"))
    unexpected = sorted(k for k in state if k not in ours)
    if missing or unexpected:
        raise ConfigError(f"the teacher's weights do not fit the student: missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}; the architecture is not one the decoder mirrors")
    for name, tensor in state.items():
        if tuple(ours[name].shape) != tuple(tensor.shape):
            raise ConfigError(f"teacher tensor {name} has shape {tuple(tensor.shape)}, the student "
                              f"{tuple(ours[name].shape)}")
        ours[name].copy_(tensor.to(ours[name].dtype))
    for name in new_norms:
        ours[name].fill_(1.0)
    return new_norms
