"""The lm-evaluation-harness model class for our models, registered as `bitnet_train`.

lm-eval's TemplateLM turns tasks into token requests; this class scores them on an Evaluable
(sources.py: a checkpoint, a stage folder, a native or transformers export), so every lm-eval task and
option (num_fewshot, limit, output_path, log_samples, ...) works unchanged:
- loglikelihood: context + continuation, the last max_length tokens, one forward per batch of requests
  (right padded, exact for causal models); returns (sum log p of the continuation, all greedy);
- loglikelihood_rolling: lm-eval's own disjoint rolling windows (EOS as the first context), summed;
- generate_until: greedy decoding with the KV cache (infer/generate.py; transformers' generate for a
  transformers export), requests of equal prompt length batched together, cut at the first stop string.
Model arguments: path (the source), config, tokenizer (overrides for a checkpoint), device, max_length,
batch_size. As lm-eval's `hf` backend does, a CUDA device on a machine without one (the `lm_eval` command
asks for cuda:0 unless told otherwise) falls back to the CPU, with a log line. Tokens are encoded without
special tokens, documents preceded by EOS, as training packs them.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from bitnet_train.evaluate.perplexity import score_windows
from bitnet_train.evaluate.sources import Evaluable, load_evaluable

log = logging.getLogger(__name__)


def usable_device(device: str | None) -> str:
    """`device`, or the CPU where it names CUDA and none is available (lm-eval's hf backend does the same)."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s asked for but CUDA is not available: evaluating on the CPU", device)
        return "cpu"
    return str(device)


@register_model("bitnet_train")
class BitnetLM(TemplateLM):
    def __init__(self, path: str | None = None, evaluable: Evaluable | None = None, config: str | None = None,
                 tokenizer: str | None = None, device: str = "cpu", max_length: int | None = None,
                 batch_size: int | str = 8, max_gen_toks: int = 256, **_ignored) -> None:
        super().__init__()
        if evaluable is None:
            if path is None:
                raise ValueError("model_args needs path=SOURCE (a checkpoint, stage folder or export)")
            evaluable = load_evaluable(path, config, tokenizer, usable_device(device), max_length)
        self.ev = evaluable
        self.tok = evaluable.tokenizer
        self.batch_size_per_gpu = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.tokens_scored = 0  # targets scored plus tokens generated (tools/bench_eval.py reports the rate)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self.ev.max_length

    @property
    def device(self):
        return self.ev.device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode_batch([string])[0]

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        items = []
        for _, context_enc, continuation_enc in requests:
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
            n = min(len(continuation_enc), len(whole) - 1)
            items.append((whole[:-1], list(continuation_enc)[len(continuation_enc) - n:]))
        results = score_windows(self.ev.logits, items, self.batch_size_per_gpu, self.tok.pad_id)
        self.tokens_scored += sum(len(t) for _, t in items)
        for (key, _, _), answer in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        flat, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for window in get_rolling_token_windows(self.tok_encode(string), self.prefix_token_id, self.max_length, 1):
                flat.append((None, *make_disjoint_window(window)))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._loglikelihood_tokens(flat)):
            totals[i] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        prompts, settings = [], []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):]
            prompts.append(ids)
            settings.append((until, max_new))
            groups[(len(ids), max_new)].append(i)
        out = [""] * len(requests)
        for (_, max_new), members in groups.items():
            for b in range(0, len(members), self.batch_size_per_gpu):
                idx = members[b:b + self.batch_size_per_gpu]
                batch = torch.tensor([prompts[i] for i in idx])
                generated = self.ev.generate(batch, max_new).cpu()[:, batch.shape[1]:]
                for row, i in enumerate(idx):
                    ids = generated[row].tolist()
                    if self.tok.eos_id in ids:
                        ids = ids[:ids.index(self.tok.eos_id)]
                    self.tokens_scored += len(ids)
                    text = self.tok_decode(ids)
                    for stop in settings[i][0]:
                        if stop and stop in text:
                            text = text.split(stop)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out
