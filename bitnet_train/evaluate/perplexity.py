"""Perplexity and bits per byte of a model on any text: token-weighted, with a strided sliding window.

Each document is scored as the training data packs it: it follows an end-of-sequence token (the first token
is predicted from EOS alone). A document longer than the context is cut into windows whose inputs are at
most `max_length` tokens; a window scores the next `stride` targets and sees up to `max_length - stride`
earlier tokens as context (the strided evaluation of the transformers perplexity guide; stride =
max_length gives disjoint windows). Every target is scored exactly once.
  loss  = sum of -log p(target) / number of targets  (nats, token-weighted over all documents)
  perplexity = exp(loss); bits per byte = sum of -log2 p(target) / UTF-8 bytes of the documents
Bits per byte does not depend on the tokenizer, so models with different vocabularies compare on it.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from bitnet_train.config import ConfigError


def windows(ids: list[int], prefix: int, max_length: int, stride: int) -> Iterator[tuple[list[int], int]]:
    """(input tokens, how many of its last positions to score) covering every token of `ids` once."""
    seq = [prefix] + list(ids)
    end = 1  # next target index in seq
    while end < len(seq):
        stop = min(end + stride, len(seq))
        start = max(0, stop - 1 - max_length)
        yield seq[start:stop - 1], stop - end
        end = stop


def _shared_rows(items: list[tuple[list[int], list[int]]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct model inputs to run, longest first, and for each item the row that holds its logits.

    A causal model's logits at positions 0..m-1 depend on the first m tokens only, so an item whose inputs
    are a prefix of another item's inputs (multiple choice: the context alone, for a one-token choice, is
    a prefix of the longer choices' inputs; equal inputs for one-token choices of the same question) reads
    its logits from that row instead of running again. Prefixes are looked up among rows that share the
    item's first tokens (rows of one question), so the lookup stays linear in the number of items."""
    head = 16
    rows: list[tuple[int, ...]] = []
    buckets: dict[tuple[int, ...], list[int]] = {}
    row_of = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: -len(items[i][0])):
        inputs = tuple(items[i][0])
        key = inputs[:head]
        found = next((r for r in buckets.get(key, ()) if rows[r][:len(inputs)] == inputs), None)
        if found is None:
            found = len(rows)
            rows.append(inputs)
            buckets.setdefault(key, []).append(found)
        row_of[i] = found
    return rows, row_of


@torch.no_grad()
def score_windows(logits_of, items: list[tuple[list[int], list[int]]], batch_size: int = 8,
                  pad_id: int = 0) -> list[tuple[float, bool]]:
    """(sum log p, all greedy) of each item's targets.

    Each item is (input tokens, target tokens), the targets being the last len(targets) next tokens of the
    inputs: target j is predicted at input position len(inputs) - len(targets) + j. Right padding is exact for
    causal models (later positions never reach earlier ones). Items whose inputs are a prefix of another's
    share its forward (`_shared_rows`); the softmax is taken over the scored positions only."""
    rows, row_of = _shared_rows(items)
    readers: dict[int, list[int]] = {}
    for i, r in enumerate(row_of):
        readers.setdefault(r, []).append(i)
    out: list[tuple[float, bool] | None] = [None] * len(items)
    for b in range(0, len(rows), batch_size):
        chunk = range(b, min(b + batch_size, len(rows)))
        batch = torch.full((len(chunk), len(rows[b])), pad_id, dtype=torch.long)
        for k, r in enumerate(chunk):
            batch[k, :len(rows[r])] = torch.tensor(rows[r])
        logits = logits_of(batch)
        for k, r in enumerate(chunk):
            for i in readers[r]:
                inputs, targets = items[i]
                n, first = len(targets), len(inputs) - len(targets)
                lp = F.log_softmax(logits[k, first:first + n].float(), dim=-1).cpu()
                tgt = torch.tensor(targets)
                out[i] = (float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
    return out  # type: ignore[return-value]


def perplexity(ev, texts: Iterable[str], stride: int | None = None, max_length: int | None = None,
               batch_size: int = 8) -> dict[str, float]:
    """{"loss", "perplexity", "bits_per_byte", "tokens", "bytes", "documents"} of the Evaluable on `texts`."""
    max_length = int(max_length or ev.max_length)
    stride = int(stride or max_length)
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride={stride} must be between 1 and the window length {max_length}")
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError("no text to score: the documents are empty")
    tok = ev.tokenizer
    pairs, nbytes = [], 0  # (window inputs, the targets it scores)
    for text, ids in zip(texts, tok.encode_batch(texts)):
        nbytes += len(text.encode("utf-8"))
        seq, end = [tok.eos_id] + list(ids), 1
        for inputs, n in windows(ids, tok.eos_id, max_length, stride):
            pairs.append((inputs, seq[end:end + n]))
            end += n
    scored = 0.0
    for logp, _ in score_windows(ev.logits, pairs, batch_size, tok.pad_id):
        scored += -logp
    tokens = sum(len(t) for _, t in pairs)
    loss = scored / tokens
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "bits_per_byte": scored / math.log(2) / nbytes, "tokens": tokens, "bytes": nbytes,
            "documents": len(texts)}


def read_texts(files: list[str] | None = None, dataset: str | None = None, split: str = "test",
               text_column: str = "text", sample_by: str = "paragraph", limit: int | None = None) -> list[str]:
    """Documents of local files (the training data's formats, `data.files`) or of a datasets dataset."""
    import datasets

    if files:
        from bitnet_train.data.files import resolve_files

        resolved = [f for spec in files for f in resolve_files(spec)]
        builders = {f.builder for f in resolved}
        if len(builders) != 1:
            raise ConfigError(f"text files of mixed formats ({', '.join(sorted(builders))}); score one format at a time")
        builder = builders.pop()
        kwargs = {"sample_by": sample_by} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=[str(f.path) for f in resolved], split="train", **kwargs)
    elif dataset:
        try:
            ds = datasets.load_dataset(dataset, split=split)
        except Exception as err:  # datasets raises many types for a missing or unreachable dataset
            raise ConfigError(f"dataset {dataset!r} split {split!r} could not be loaded ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:150]})") from None
    else:
        raise ConfigError("perplexity needs text: give --text FILE... or --dataset NAME")
    if text_column not in ds.column_names:
        raise ConfigError(f"the text has no column {text_column!r} (columns: {', '.join(ds.column_names)}); "
                          "pass --text-column")
    texts = [t.strip() for t in ds[text_column] if t and t.strip()]
    return texts[:limit] if limit else texts
