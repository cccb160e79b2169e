"""The distillation losses equal BitDistill's reference definitions, written here independently in torch.

Reference definitions (BitDistill's training code): the logit loss is kl_div(log_softmax(student / tau),
softmax(teacher / tau), reduction="batchmean") over the attention-mask-selected positions, times tau^2.
The relation loss takes each layer's Q, K, V states as attention holds them, [B, heads, S, head_dim],
merges the heads to [B, S, heads * head_dim], splits that into R relation heads [B, R, S, width / R],
L2-normalizes, forms A A^T (temperature 1), flattens to B*R*S rows of S, softmaxes, clamps both
distributions at 1e-8, takes kl_div(log(student), teacher, reduction="batchmean"), sums over states and
layers and divides by (layers x R).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitnet_train.distill.losses import attention_relation_loss, logit_kl


def _reference_relation(student_layers, teacher_layers, split_heads: int) -> torch.Tensor:
    """student_layers / teacher_layers: {state: [per-layer [B, heads, S, head_dim]]} (heads may differ)."""
    total = torch.zeros(())
    n_layers = None
    for key in ("v", "k", "q"):
        n_layers = len(student_layers[key])
        for s_heads, t_heads in zip(student_layers[key], teacher_layers[key]):
            rows = []
            for x in (s_heads, t_heads):
                b, h, s, d = x.shape
                merged = x.transpose(1, 2).reshape(b, s, h * d)
                split = merged.reshape(b, s, split_heads, h * d // split_heads).transpose(1, 2)
                unit = F.normalize(split, p=2, dim=-1)
                rel = (unit @ unit.transpose(-2, -1)).reshape(-1, s)
                rows.append(F.softmax(rel, dim=-1).clamp(min=1e-8))
            total = total + F.kl_div(rows[0].log(), rows[1], reduction="batchmean")
    return total / (n_layers * split_heads)


def _ours(layers_by_state):
    """{layer: {state: [B, S, heads * head_dim]}} from the reference layout."""
    out = {}
    for key, per_layer in layers_by_state.items():
        for i, x in enumerate(per_layer):
            b, h, s, d = x.shape
            out.setdefault(i, {})[key] = x.transpose(1, 2).reshape(b, s, h * d)
    return out


@pytest.mark.parametrize("split_heads", [4, 8])
def test_relation_loss_equals_the_reference_definition(split_heads):
    g = torch.Generator().manual_seed(11)
    b, s, layers = 3, 7, 2
    # teacher: 4 query heads, 2 KV heads of 16; student: 8 query heads and 4 KV heads of 8 (another width)
    shapes = {"teacher": {"q": (4, 16), "k": (2, 16), "v": (2, 16)},
              "student": {"q": (6, 16), "k": (3, 8), "v": (4, 8)}}
    make = lambda who: {k: [torch.randn(b, h, s, d, generator=g) * 3 for _ in range(layers)]  # noqa: E731
                        for k, (h, d) in shapes[who].items()}
    teacher, student = make("teacher"), make("student")
    expected = _reference_relation(student, teacher, split_heads)
    got = attention_relation_loss(_ours(student), _ours(teacher), [(0, 0), (1, 1)], ["q", "k", "v"], split_heads)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert expected.item() > 1e-3
    mean = attention_relation_loss(_ours(student), _ours(teacher), [(0, 0), (1, 1)], ["q", "k", "v"], split_heads,
                                   reduction="mean")
    assert mean.item() == pytest.approx(expected.item() * split_heads, rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 5.0])
def test_logit_loss_equals_the_reference_definition(tau):
    g = torch.Generator().manual_seed(12)
    student, teacher = torch.randn(2, 6, 50, generator=g) * 4, torch.randn(2, 6, 50, generator=g) * 4
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    keep = mask.view(-1).bool()
    expected = F.kl_div(F.log_softmax(student.view(-1, 50)[keep] / tau, dim=-1),
                        F.softmax(teacher.view(-1, 50)[keep] / tau, dim=-1), reduction="batchmean") * tau**2
    assert logit_kl(student, teacher, tau, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert logit_kl(student, teacher, tau).item() == pytest.approx(
        (F.kl_div(F.log_softmax(student.view(-1, 50) / tau, -1), F.softmax(teacher.view(-1, 50) / tau, -1),
                  reduction="batchmean") * tau**2).item(), rel=1e-6)
