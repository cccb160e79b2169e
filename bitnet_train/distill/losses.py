"""BitDistill's stage-3 losses: logit KL and MiniLMv2 multi-head attention-relation KL (docs/METHODS.md#bitdistill-stage-3-attention-relation-distillation).

Logits (Hinton et al.; BitDistill eq. 8-9): with p = softmax(z_teacher / tau), q = softmax(z_student / tau),
    L_logits = mean over valid positions of KL(p || q) = sum_v p_v (log p_v - log q_v),
times tau^2 when `tau_squared`. This is the reference code's value: a `batchmean` KL over the rows of the
attention-mask-selected positions, times tau^2 (it keeps gradient magnitudes independent of tau).

Cached teacher logits keep, per position, the k most likely tokens' log-probabilities at temperature tau
and the log of the remaining mass. The KL is then the exact KL between the two distributions coarsened
to k + 1 outcomes (the k tokens and "anything else"); with k = vocabulary it is the full KL.

Attention relations (MiniLMv2, Wang et al. 2021; BitDistill eq. 10-11): for a state A in {Q, K, V} of one
layer, [B, S, H*D] (heads concatenated; Q and K as attention uses them, see teacher.py), split the features
into R relation heads
A_r [B, R, S, H*D/R], and form per head the relation distribution over keys
    cosine:      softmax(n(A_r) n(A_r)^T / t)    n = L2 normalization of each row (reference code, t = 1)
    scaled_dot:  softmax(A_r A_r^T / sqrt(H*D/R))
Relations are S x S, so teacher and student may differ in width (only R must divide both). Per state and
layer, KL(teacher relation || student relation) is summed over keys and averaged over all B*R*S relation
rows (a `batchmean` over the rows, as the BitDistill reference code computes it, both distributions
clamped below at 1e-8 before the log); these are summed over the chosen states and layer pairs and, with
reduction="reference" (the default), divided by (layer pairs x R): the reference code's value, for which
its published gamma (1e5 classification, 1e3 summarization) is meant. reduction="mean" divides by the
layer pairs only (R times larger, a plain average of the rows' KL): an option for gamma values tuned
that way. Optional masks: causal (keys after the query are excluded) and padding (padding keys are
excluded and padding queries dropped from the average); the reference code uses neither.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

RELATION_EPS = 1e-8
"""Relation probabilities are clamped below at this value before the log (reference code)."""
REDUCTIONS = ("reference", "mean")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
             mask: torch.Tensor | None = None, tau_squared: bool = True) -> torch.Tensor:
    """KL(softmax(teacher / tau) || softmax(student / tau)) per position [B, S, V], averaged over `mask` [B, S]."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: teacher and student need the same vocabulary")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    loss = _masked_mean(per_position, mask)
    return loss * temperature**2 if tau_squared else loss


@torch.no_grad()
def teacher_top_k(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest log-probabilities of softmax(logits / tau), their token ids, and log(1 - their mass).

    Returns (values [.., k] float32, indices [.., k] int64, log_rest [..] float32); log_rest is -inf when
    the k tokens hold all the mass. The rest is a log-sum-exp over the other tokens (no cancellation)."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    k = min(k, log_p.shape[-1])
    values, indices = log_p.topk(k, dim=-1)
    return values, indices, _log_rest(log_p, indices)


def _log_rest(log_probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `indices` (last dimension)."""
    others = log_probs.scatter(-1, indices, float("-inf"))
    return torch.logsumexp(others, dim=-1)


def logit_kl_top_k(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                   log_rest: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None,
                   tau_squared: bool = True) -> torch.Tensor:
    """KL between teacher and student coarsened to the teacher's cached top-k tokens plus one rest bucket.

    values/indices [B, S, k] and log_rest [B, S] come from `teacher_top_k` at the same temperature."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    indices = indices.long()
    q_top = log_q.gather(-1, indices)
    q_rest = _log_rest(log_q, indices)
    values, log_rest = values.float(), log_rest.float()
    top = (values.exp() * (values - q_top)).sum(-1)
    p_rest = log_rest.exp()
    # 0 * log(0 / x) = 0 when the top-k hold all the teacher's mass
    rest = torch.where(p_rest > 0, p_rest * (log_rest - q_rest), torch.zeros_like(p_rest))
    loss = _masked_mean(top + rest, mask)
    return loss * temperature**2 if tau_squared else loss


def relation_log_probs(states: torch.Tensor, relation_heads: int, relation: str = "cosine",
                       temperature: float = 1.0, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Relation log-distributions [B, R, S, S] of states [B, S, F] split into R heads of F / R features,
    log(max(softmax, 1e-8)) as the reference code takes them (masked entries are then log 1e-8 too).

    key_mask [B or 1, 1, S or 1, S] (True = allowed) excludes keys; each row keeps at least its own position."""
    b, s, width = states.shape
    if width % relation_heads:
        raise ValueError(f"state width {width} is not divisible by {relation_heads} relation heads")
    heads = states.float().view(b, s, relation_heads, width // relation_heads).transpose(1, 2)  # [B, R, S, d]
    if relation == "cosine":
        heads = F.normalize(heads, dim=-1)
        scores = heads @ heads.transpose(-1, -2) / temperature
    elif relation == "scaled_dot":
        scores = heads @ heads.transpose(-1, -2) / (width // relation_heads) ** 0.5
    else:
        raise ValueError(f"relation={relation!r}: choose cosine or scaled_dot")
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return F.softmax(scores, dim=-1).clamp(min=RELATION_EPS).log()


def relation_mask(seq_len: int, device: torch.device, causal: bool, padding: torch.Tensor | None
                  ) -> torch.Tensor | None:
    """Allowed (query, key) pairs [B or 1, 1, S, S]: causal and/or non-padding keys; the diagonal always allowed."""
    if not causal and padding is None:
        return None
    allowed = torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    if padding is not None:
        allowed = allowed & padding.bool()[:, None, None, :]
    return allowed | torch.eye(seq_len, dtype=torch.bool, device=device)


def relation_kl(student_states: torch.Tensor, teacher_states: torch.Tensor, relation_heads: int,
                relation: str = "cosine", temperature: float = 1.0, causal: bool = False,
                padding: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher relations || student relations) of one state, averaged over the B*R*S relation rows.

    padding [B, S] (1 = real token), when given, masks padding keys and drops padding queries."""
    if student_states.shape[:2] != teacher_states.shape[:2]:
        raise ValueError(f"student states {tuple(student_states.shape)} and teacher states "
                         f"{tuple(teacher_states.shape)} cover different batches or sequence lengths")
    allowed = relation_mask(student_states.shape[1], student_states.device, causal, padding)
    log_t = relation_log_probs(teacher_states.detach(), relation_heads, relation, temperature, allowed)
    log_s = relation_log_probs(student_states, relation_heads, relation, temperature, allowed)
    # masked entries belong to neither distribution: zero them explicitly
    terms = log_t.exp() * (log_t - log_s)
    if allowed is not None:
        terms = terms.masked_fill(~allowed, 0.0)
    per_query = terms.sum(-1)  # [B, R, S]
    if padding is None:
        return per_query.mean()
    rows = padding.bool()[:, None, :].expand_as(per_query)
    return _masked_mean(per_query, rows)


def attention_relation_loss(student: Mapping[int, Mapping[str, torch.Tensor]],
                            teacher: Mapping[int, Mapping[str, torch.Tensor]],
                            pairs: Sequence[tuple[int, int]], states: Sequence[str], relation_heads: int,
                            relation: str = "cosine", temperature: float = 1.0, causal: bool = False,
                            padding: torch.Tensor | None = None, reduction: str = "reference") -> torch.Tensor:
    """Sum over `states` (q, k, v) and `pairs` of `relation_kl`, divided by len(pairs) * relation_heads
    (reduction="reference", the reference code) or by len(pairs) (reduction="mean").

    student[layer][state] and teacher[layer][state] are [B, S, width] states."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {', '.join(REDUCTIONS)}")
    total = 0.0
    for teacher_layer, student_layer in pairs:
        for name in states:
            total = total + relation_kl(student[student_layer][name], teacher[teacher_layer][name], relation_heads,
                                        relation, temperature, causal, padding)
    divisor = len(pairs) * (relation_heads if reduction == "reference" else 1)
    return total / divisor
