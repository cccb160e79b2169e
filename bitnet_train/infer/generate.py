"""Autoregressive generation with a KV cache: one forward over the prompt, then one token per step.

Works with any decoder of models/decoder.py (the training model or the packed runtime): the
prompt fills the cache, every later step feeds only the newest token, and only the last position
goes through the head. Stops after `max_new_tokens` or when every sequence has produced `eos_id`.
"""

from __future__ import annotations

import torch

from bitnet_train.infer.sampling import sample_next


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             eos_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, S] prompt ids -> [B, S + n] ids, n <= max_new_tokens."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be [batch, length] with at least one token")
    if max_new_tokens < 1:
        return input_ids
    cache = model.new_cache(input_ids.shape[1] + max_new_tokens)
    hidden = model.model(input_ids, cache=cache)[:, -1]
    out = [input_ids]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        token = sample_next(model.lm_head(hidden), temperature, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        out.append(token[:, None])
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        hidden = model.model(token[:, None], cache=cache)[:, -1]
    return torch.cat(out, dim=1)
