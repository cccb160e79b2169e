"""Held-out next-token loss of any causal LM (our student or a transformers teacher) on a data loader.

Token-weighted mean cross-entropy over the targets that are not -100, the quantity PretrainModule reports
as val/loss, so teacher, students after each stage and plain QAT runs are compared on the same numbers.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F


@torch.no_grad()
def validation_loss(logits_of: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[Mapping[str, torch.Tensor]],
                    device: torch.device | str) -> dict[str, float]:
    """{"loss", "perplexity", "tokens"} of `logits_of(input_ids) -> [B, S, V]` over `batches`."""
    total, count = 0.0, 0
    for batch in batches:
        logits = logits_of(batch["input_ids"].to(device))
        labels = batch["labels"].to(device)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                       reduction="sum"))
        count += int((labels != -100).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"), "tokens": count}
