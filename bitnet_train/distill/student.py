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
all_linear: before every quantized linear). These norms change the function even before quantization:
an RMSNorm with gain 1 divides each token's input by its RMS, so with gains at 1 the unquantized
student is NOT the teacher (it is only with distill.norms=none). `load_teacher_weights` sets the gains
to 1 (the reference code's initialization); `calibrate_new_norms` instead fits each gain on a few
batches so that the unquantized student reproduces the teacher as closely as a norm can: an RMSNorm
cannot be undone exactly (the per-token RMS varies), so each channel's gain is the least-squares fit of
the teacher's input by the normalized input. With `distill.student_init=FOLDER` the weights come from that model instead
(the paper's setting: the off-the-shelf base model the teacher was fine-tuned from; same architecture and
shape, checked by `check_student_init`); calibration then preserves that model's function. With
`distill.student=config` the student is instead a fresh model shaped by `model`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from bitnet_train.config import ConfigError, ModelConfig
from bitnet_train.distill.config import BitDistillConfig
from bitnet_train.distill.teacher import Teacher
from bitnet_train.models.hf import from_hf_state_dict, model_config_from_hf
from bitnet_train.quant.bitlinear import BitLinear


def student_model_config(teacher: Teacher, distill: BitDistillConfig, model: ModelConfig) -> ModelConfig:
    """The student's shape: the teacher's (BitDistill), or `model` with the teacher's vocabulary."""
    if distill.student == "teacher":
        return model_config_from_hf(teacher.config)
    vocab = teacher.vocab_size
    if model.vocab_size is not None and model.vocab_size != vocab:
        raise ConfigError(f"model.vocab_size={model.vocab_size} differs from the teacher's vocabulary ({vocab}); "
                          "logit distillation needs the same vocabulary: set model.vocab_size=null")
    return dataclasses.replace(model, vocab_size=vocab)


def check_student_init(init_config, teacher_config, source: str) -> None:
    """distill.student_init must be a model the student's shape (the teacher's) mirrors; else a ConfigError."""
    ours, theirs = model_config_from_hf(init_config), model_config_from_hf(teacher_config)
    if ours != theirs:
        diff = {f.name: (getattr(ours, f.name), getattr(theirs, f.name)) for f in dataclasses.fields(ours)
                if getattr(ours, f.name) != getattr(theirs, f.name)}
        raise ConfigError(f"distill.student_init={source!r} is not shaped like the teacher (student_init vs teacher: "
                          f"{diff}); give the model the teacher was fine-tuned from, or student_init=null")


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


@torch.no_grad()
def calibrate_new_norms(model: nn.Module, batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]]
                        ) -> dict[str, float]:
    """Fit every BitLinear input norm's gain so that the unquantized student reproduces the teacher.

    With quantization and the new norms bypassed, the student taken from the teacher computes the
    teacher's function, so each norm sees the teacher's own activations x. Per channel c, the gain
    g_c = sum x_c u_c / sum u_c^2, u = x / sqrt(mean(x^2) + eps) the normalized input, minimizes
    sum (g_c u_c - x_c)^2 over the tokens of `batches` (token ids [B, S], or data-loader batches with
    "input_ids"; padding tokens count too): the norm's output matches its
    input as closely as one gain per channel can. Returns each norm's relative residual
    ||g u - x|| / ||x|| (0 would be function-preserving). The model's quantization state is restored."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear) and m.input_norm is not None}
    if not layers:
        return {}
    saved = {name: (m.weight_lambda, m.activation_lambda, m.input_norm_active) for name, m in model.named_modules()
             if isinstance(m, BitLinear)}
    sums = {name: [0.0, 0.0, 0.0, 0.0] for name in layers}

    def recorder(name: str, norm: nn.Module):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float().flatten(0, -2)
            u = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
            acc = sums[name]
            acc[0] = acc[0] + (x * u).sum(0)
            acc[1] = acc[1] + u.pow(2).sum(0)
            acc[2] = acc[2] + x.pow(2).sum(0)
        return hook

    handles = [m.register_forward_pre_hook(recorder(name, m.input_norm)) for name, m in layers.items()]
    was_training = model.training
    try:
        for m in model.modules():
            if isinstance(m, BitLinear):
                m.set_lambda(0.0, 0.0)
                m.input_norm_active = False
        model.eval()
        for ids in batches:
            ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
            model(ids.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        for name, m in model.named_modules():
            if name in saved:
                m.set_lambda(saved[name][0], saved[name][1])
                m.input_norm_active = saved[name][2]
        model.train(was_training)
    residuals = {}
    for name, m in layers.items():
        xu, uu, xx, _ = sums[name]
        if not torch.is_tensor(uu):
            raise ValueError("calibrate_new_norms needs at least one batch")
        gain = xu / uu.clamp(min=1e-12)
        m.input_norm.weight.copy_(gain.to(m.input_norm.weight.dtype))
        # sum (g u - x)^2 = g^2 uu - 2 g xu + xx per channel
        residual = (gain.pow(2) * uu - 2 * gain * xu + xx).sum().clamp(min=0)
        residuals[name] = float((residual / xx.sum().clamp(min=1e-12)).sqrt())
    return residuals
