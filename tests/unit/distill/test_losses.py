"""Logit KL against a hand computation, the top-k cache form, and MiniLMv2 relation KL properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bitnet_train.distill.losses import (attention_relation_loss, logit_kl, logit_kl_top_k, relation_kl,
                                         relation_log_probs, teacher_top_k)


def _softmax(row: list[float], tau: float) -> list[float]:
    top = max(row)
    exps = [math.exp((x - top) / tau) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, mask=None) -> float:
    """KL(p_teacher || q_student) per position with plain Python floats, averaged over the masked positions."""
    values, weights = [], []
    b, s, _ = student.shape
    for i in range(b):
        for j in range(s):
            p = _softmax(teacher[i, j].tolist(), tau)
            q = _softmax(student[i, j].tolist(), tau)
            values.append(sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(p, q)))
            weights.append(1.0 if mask is None else float(mask[i, j]))
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def test_logit_kl_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 7, generator=g) * 3, torch.randn(2, 3, 7, generator=g) * 3
    for tau in (1.0, 2.0, 5.0):
        expected = _hand_kl(student, teacher, tau)
        assert logit_kl(student, teacher, tau, tau_squared=False).item() == pytest.approx(expected, rel=1e-5)
        assert logit_kl(student, teacher, tau).item() == pytest.approx(expected * tau**2, rel=1e-5)


def test_logit_kl_small_example_by_hand():
    """Two outcomes, tau 1: p = softmax([0, ln 3]) = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2)."""
    teacher = torch.tensor([[[0.0, math.log(3.0)]]])
    student = torch.zeros(1, 1, 2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert logit_kl(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_logit_kl_mask_and_properties():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 4, 11, generator=g), torch.randn(2, 4, 11, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert logit_kl(student, teacher, 2.0, mask, tau_squared=False).item() == pytest.approx(
        _hand_kl(student, teacher, 2.0, mask), rel=1e-5)
    assert logit_kl(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_kl(teacher + 5.0, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    assert logit_kl(student, teacher, 3.0).item() > 0
    # the gradient is (q - p) / tau per logit (times tau^2 / positions)
    s = student.clone().requires_grad_(True)
    logit_kl(s, teacher, 2.0, tau_squared=False).backward()
    expected = (F.softmax(student / 2.0, -1) - F.softmax(teacher / 2.0, -1)) / 2.0 / 8
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_logit_kl_rejects_different_vocabularies():
    with pytest.raises(ValueError, match="same vocabulary"):
        logit_kl(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6))


def test_top_k_cache_form_is_exact_with_full_vocabulary_and_close_with_top_k():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 5, 50, generator=g), torch.randn(2, 5, 50, generator=g) * 4
    full = logit_kl(student, teacher, 2.0)
    values, indices, rest = teacher_top_k(teacher, 50, 2.0)
    assert torch.isinf(rest).all() and (rest < 0).all()
    torch.testing.assert_close(logit_kl_top_k(student, values, indices, rest, 2.0), full, rtol=1e-5, atol=1e-6)
    values, indices, rest = teacher_top_k(teacher, 10, 2.0)
    mass = values.exp().sum(-1) + rest.exp()
    torch.testing.assert_close(mass, torch.ones_like(mass), rtol=1e-5, atol=1e-6)
    coarse = logit_kl_top_k(student, values, indices, rest, 2.0)
    assert 0 < coarse.item() <= full.item() + 1e-6  # coarsening never increases a KL (data processing)
    # hand form of the coarse KL for one position
    p = F.softmax(teacher[0, 0] / 2.0, -1).double()
    q = F.softmax(student[0, 0] / 2.0, -1).double()
    top = p.topk(10).indices
    others = torch.ones(50, dtype=torch.bool)
    others[top] = False
    by_hand = (p[top] * (p[top] / q[top]).log()).sum() + p[others].sum() * (p[others].sum() / q[others].sum()).log()
    one = logit_kl_top_k(student[:1, :1], values[:1, :1], indices[:1, :1], rest[:1, :1], 2.0, tau_squared=False)
    assert one.item() == pytest.approx(by_hand.item(), rel=1e-4)


def test_relation_log_probs_cosine_and_scaled_dot_by_hand():
    g = torch.Generator().manual_seed(3)
    states = torch.randn(1, 4, 6, generator=g)
    # R = 2 heads of 3 features; head 1 is features 3..5
    head = states[0, :, 3:]
    cos = F.normalize(head, dim=-1) @ F.normalize(head, dim=-1).T
    torch.testing.assert_close(relation_log_probs(states, 2, "cosine")[0, 1], F.log_softmax(cos, -1))
    torch.testing.assert_close(relation_log_probs(states, 2, "cosine", temperature=0.5)[0, 1],
                               F.log_softmax(cos / 0.5, -1))
    dot = head @ head.T / math.sqrt(3)
    torch.testing.assert_close(relation_log_probs(states, 2, "scaled_dot")[0, 1], F.log_softmax(dot, -1))
    with pytest.raises(ValueError, match="not divisible"):
        relation_log_probs(states, 4)


@pytest.mark.parametrize("relation", ["cosine", "scaled_dot"])
def test_relation_kl_zero_for_identical_states_and_positive_otherwise(relation):
    g = torch.Generator().manual_seed(4)
    states = torch.randn(2, 9, 32, generator=g)
    assert relation_kl(states, states, 4, relation).item() == pytest.approx(0.0, abs=1e-6)
    # a positive rescaling leaves cosine relations unchanged
    if relation == "cosine":
        assert relation_kl(states * 3.0, states, 4, relation).item() == pytest.approx(0.0, abs=1e-6)
    other = states + 0.5 * torch.randn(2, 9, 32, generator=g)
    assert relation_kl(other, states, 4, relation).item() > 1e-4


def test_relation_kl_works_across_hidden_sizes():
    """Relations are S x S: a 48-wide student learns from a 96-wide teacher (R = 8 divides both)."""
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(2, 7, 96, generator=g)
    student = torch.randn(2, 7, 48, generator=g, requires_grad=True)
    loss = relation_kl(student, teacher, 8)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # a student whose relations equal the teacher's (each head's rows keep their angles) scores zero:
    # teacher heads of 12 features, student heads of 6 features holding the teacher head's first 6 features
    # of a teacher whose other 6 are zero
    teacher = torch.zeros(2, 7, 96)
    base = torch.randn(2, 7, 8, 6, generator=g)
    teacher.view(2, 7, 8, 12)[..., :6] = base
    student = base.reshape(2, 7, 48)
    assert relation_kl(student, teacher, 8).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_kl_matches_explicit_loops():
    g = torch.Generator().manual_seed(6)
    b, s, r = 2, 5, 2
    teacher, student = torch.randn(b, s, 8, generator=g), torch.randn(b, s, 12, generator=g)
    total = 0.0
    for i in range(b):
        for h in range(r):
            t = F.normalize(teacher[i].view(s, r, 4)[:, h], dim=-1)
            u = F.normalize(student[i].view(s, r, 6)[:, h], dim=-1)
            pt, ps = F.softmax(t @ t.T, -1), F.softmax(u @ u.T, -1)
            total += (pt * (pt.log() - ps.log())).sum().item() / s
    assert relation_kl(student, teacher, r).item() == pytest.approx(total / (b * r), rel=1e-5)


def test_relation_kl_masks():
    g = torch.Generator().manual_seed(7)
    teacher, student = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    plain = relation_kl(student, teacher, 2)
    causal = relation_kl(student, teacher, 2, causal=True)
    assert causal.item() != pytest.approx(plain.item())
    # causal: the first query sees only itself, so its KL is 0; checked against a loop over queries
    total = 0.0
    for i in range(2):
        for h in range(2):
            t = F.normalize(teacher[i].view(6, 2, 8)[:, h], dim=-1)
            u = F.normalize(student[i].view(6, 2, 8)[:, h], dim=-1)
            for q in range(6):
                pt, ps = F.softmax(t[q] @ t[:q + 1].T, -1), F.softmax(u[q] @ u[:q + 1].T, -1)
                total += (pt * (pt.log() - ps.log())).sum().item()
    assert causal.item() == pytest.approx(total / (2 * 2 * 6), rel=1e-5)
    # padding: the padded positions of sequence 0 change nothing once masked
    padding = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    masked = relation_kl(student, teacher, 2, padding=padding)
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[0, 4:] += 10 * torch.randn(2, 16, generator=g)
    noisy_t[0, 4:] -= 10 * torch.randn(2, 16, generator=g)
    assert relation_kl(noisy_s, noisy_t, 2, padding=padding).item() == pytest.approx(masked.item(), rel=1e-6)
    assert relation_kl(noisy_s, noisy_t, 2).item() != pytest.approx(plain.item())
    # masked entries give finite gradients
    s = student.clone().requires_grad_(True)
    relation_kl(s, teacher, 2, causal=True, padding=padding).backward()
    assert torch.isfinite(s.grad).all()


def test_attention_relation_loss_sums_states_and_averages_layers():
    g = torch.Generator().manual_seed(8)
    make = lambda: {n: torch.randn(1, 5, 8, generator=g) for n in "qkv"}  # noqa: E731
    teacher = {3: make(), 5: make()}
    student = {0: make(), 1: make()}
    pairs = [(3, 0), (5, 1)]
    expected = sum(relation_kl(student[s][n], teacher[t][n], 2) for t, s in pairs for n in "qkv") / 2
    got = attention_relation_loss(student, teacher, pairs, ["q", "k", "v"], 2, reduction="mean")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    reference = attention_relation_loss(student, teacher, pairs, ["q", "k", "v"], 2)
    assert reference.item() == pytest.approx(expected.item() / 2, rel=1e-6)
    only_v = attention_relation_loss(student, teacher, pairs, ["v"], 2, reduction="mean")
    assert only_v.item() == pytest.approx(
        ((relation_kl(student[0]["v"], teacher[3]["v"], 2) + relation_kl(student[1]["v"], teacher[5]["v"], 2)) / 2).item(),
        rel=1e-6)
