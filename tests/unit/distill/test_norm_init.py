"""The new stage-1 norms change the function; calibrated gains bring the unquantized student closer to the
teacher, and each gain is the per-channel least-squares fit of the teacher's own activation (captured here
from the transformers teacher, not from the student)."""

from __future__ import annotations

import torch

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.distill.config import BitDistillConfig
from bitnet_train.distill.student import calibrate_new_norms, load_teacher_weights, student_model_config
from bitnet_train.distill.teacher import load_teacher
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import quantize_model


def _student(teacher, norms="subln"):
    model = CausalLM(student_model_config(teacher, BitDistillConfig(teacher="t"), ModelConfig()))
    quantize_model(model, QuantConfig(norm=norms, weight_lambda=0.0, activation_lambda=0.0))
    load_teacher_weights(model, teacher.model.state_dict())
    return model.eval()


def test_norms_at_one_are_not_the_teacher_and_calibration_is_closer(qwen2_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randint(4, 4096, (4, 32), generator=g) for _ in range(2)]
    held_out = torch.randint(4, 4096, (4, 32), generator=g)
    with torch.no_grad():
        expected = teacher(held_out).logits
        ones = _student(teacher)
        diff_ones = (ones(held_out) - expected).abs()
        calibrated = _student(teacher)
        residuals = calibrate_new_norms(calibrated, calibration)
        diff_cal = (calibrated(held_out) - expected).abs()
    assert diff_ones.max() > 0.1  # an RMSNorm at gain 1 still rescales: not function-preserving
    assert diff_cal.mean() < 0.9 * diff_ones.mean() and diff_cal.max() < diff_ones.max()
    assert len(residuals) == 2 * 3 and all(0 < r < 1 for r in residuals.values())
    # quantization state restored
    assert all(m.input_norm_active for m in calibrated.modules() if hasattr(m, "input_norm_active"))


def test_each_gain_is_the_least_squares_fit_of_the_teachers_activation(qwen2_teacher):
    teacher = load_teacher(BitDistillConfig(teacher=str(qwen2_teacher)))
    ids = torch.randint(4, 4096, (3, 12), generator=torch.Generator().manual_seed(1))
    seen = {}
    o_proj = teacher.model.model.layers[1].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].flatten(0, -2)))
    teacher(ids)
    handle.remove()
    x = seen["x"].double()
    u = x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    # least squares per channel: argmin_g sum_t (g u_tc - x_tc)^2, by torch.linalg.lstsq on each column
    expected = torch.stack([torch.linalg.lstsq(u[:, c:c + 1], x[:, c:c + 1]).solution[0, 0] for c in range(x.shape[1])])
    student = _student(teacher)
    calibrate_new_norms(student, [{"input_ids": ids}])  # a data loader's batch
    got = student.model.layers[1].self_attn.o_proj.input_norm.weight.double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
