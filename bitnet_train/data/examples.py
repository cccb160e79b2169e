"""Prompt/answer task data (`data.layout=prompt_answer`): one record becomes one padded example.

Records come from local .jsonl/.json/.parquet files (`data.files`) or a hub dataset (`data.dataset`) with
a prompt column and an answer column (`data.prompt_field`, `data.answer_field`). Each is tokenized once
(cached like packed documents): prompt ids, then answer ids followed by EOS. An example is that sequence
cut to `seq_len + 1` tokens and right-padded with the tokenizer's pad id: inputs are tokens[:-1], labels
tokens[1:] with -100 wherever the target is a prompt token or padding (the loss covers the answer and its
EOS), and `attention_mask` marks the real input tokens. When a record is too long the prompt loses tokens
from its start (at least one is kept) and then the answer from its end. Right padding needs no attention
mask in the model: under causal attention real tokens never attend to the padding after them.
Records are split into training and validation by a hash of prompt and answer (as documents are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

from bitnet_train.config import ConfigError, DataConfig
from bitnet_train.data.files import check_file, resolve_files
from bitnet_train.data.packing import TOKENIZE_VERSION, doc_hash
from bitnet_train.data.sources import Documents, _digest, _hub_reachable, _offline_mode, _one_line
from bitnet_train.data.tokenizer import Tokenizer

LAYOUTS = ("text", "prompt_answer")
PAIRS_VERSION = 2
"""Bumped when a pair's tokens change (2: prompt and answer tokenized as one text)."""


def _pair_columns(ds: Any, cfg: DataConfig, where: str) -> Any:
    names = ds.column_names
    for key in ("prompt_field", "answer_field"):
        field = getattr(cfg, key)
        if field not in names:
            raise ConfigError(f"data.{key}={field!r} is not a column of {where}; its columns are: {', '.join(names)}")
        dtype = getattr(ds.features.get(field), "dtype", "string")
        if dtype not in ("string", "large_string", "string_view"):
            raise ConfigError(f"data.{key}={field!r} in {where} holds {ds.features.get(field)} values, not text")
    ds = ds.select_columns([cfg.prompt_field, cfg.answer_field])
    return ds.rename_columns({cfg.prompt_field: "prompt", cfg.answer_field: "answer"}) \
        if (cfg.prompt_field, cfg.answer_field) != ("prompt", "answer") else ds


def load_pairs(cfg: DataConfig) -> Documents:
    """The prompt/answer records `cfg` names, as a dataset with columns `prompt` and `answer`."""
    import datasets

    if cfg.dataset is not None:
        name = f"data.dataset={cfg.dataset!r}"
        if not _offline_mode() and not _hub_reachable():
            raise ConfigError(f"{name} needs the Hugging Face Hub, which cannot be reached; use data.files=PATH")
        try:
            ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split, cache_dir=cfg.cache_dir)
        except Exception as err:
            raise ConfigError(f"{name} could not be loaded ({_one_line(err)})") from None
        identity = {"dataset": cfg.dataset, "config": cfg.dataset_config, "split": cfg.split,
                    "version": getattr(ds, "_fingerprint", None)}
        where = name
    else:
        if cfg.files is None:
            raise ConfigError("data.layout=prompt_answer needs task records: set data.files to .jsonl/.json/.parquet "
                              "files with prompt and answer columns (or data.dataset)")
        files = resolve_files(cfg.files)
        plain = [str(f.path) for f in files if f.builder == "text"]
        if plain:
            raise ConfigError(f"data.layout=prompt_answer reads records with two columns; {plain[0]} is plain text "
                              "(use .jsonl/.json/.parquet, or data.layout=text)")
        builders = {f.builder for f in files}
        if len(builders) > 1:
            raise ConfigError(f"data.files={cfg.files!r} mixes {' and '.join(sorted(builders))} files; "
                              "use one format for prompt/answer records")
        for f in files:
            check_file(f, cfg.prompt_field)
            check_file(f, cfg.answer_field)
        try:
            ds = datasets.load_dataset(builders.pop(), data_files=[str(f.path) for f in files], split="train",
                                       cache_dir=cfg.cache_dir)
        except Exception as err:
            raise ConfigError(f"data.files: datasets could not read {cfg.files!r} ({_one_line(err)})") from None
        identity = {"files": [[str(f.path), f.size, f.mtime_ns] for f in files]}
        where = str(files[0].path) if len(files) == 1 else f"the files of data.files={cfg.files!r}"
    ds = _pair_columns(ds, cfg, where)
    if ds.num_rows == 0:
        raise ConfigError(f"{where} has no records")
    identity.update(layout="prompt_answer", prompt=cfg.prompt_field, answer=cfg.answer_field)
    return Documents(ds, _digest(identity), f"{ds.num_rows} prompt/answer records from {where}")


def encode_pairs(prompts: list[str | None], answers: list[str | None], tokenizer: Tokenizer
                 ) -> tuple[list[list[int]], list[int], list[int]]:
    """(ids of prompt + answer, then EOS; prompt length; hash of the record) of each record.

    The pair is tokenized as one text and split after the prompt's own token count, as lm-eval splits a
    context and its continuation (trailing whitespace of the prompt moves to the answer first): the answer's
    tokens are then the ones the evaluator scores. Tokenized apart, an answer such as " Pride" becomes
    other pieces than it is after "Answer:" (a tokenizer with explicit space pieces), and a model trained
    on them scores the evaluator's tokens as if it had never seen them."""
    hashes = [doc_hash((p or "") + "\x1f" + (a or "")) for p, a in zip(prompts, answers)]
    prompts, answers = list(prompts), list(answers)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        p, a = p or "", a or ""
        spaces = len(p) - len(p.rstrip())
        prompts[i], answers[i] = (p[:-spaces], p[-spaces:] + a) if spaces else (p, a)
    p_ids = tokenizer.encode_batch(prompts)
    whole = tokenizer.encode_batch([p + a for p, a in zip(prompts, answers)])
    ids = [list(w) + [tokenizer.eos_id] for w in whole]
    return ids, [min(len(p), len(w)) for p, w in zip(p_ids, whole)], hashes


def pairs_fingerprint(documents_fingerprint: str, tokenizer: Tokenizer) -> str:
    return "bitnet-pairs-" + _digest({"v": TOKENIZE_VERSION, "pairs": PAIRS_VERSION, "documents": documents_fingerprint,
                                      "tokenizer": tokenizer.fingerprint, "eos": tokenizer.eos_id})


def tokenize_pairs(documents: Any, tokenizer: Tokenizer, fingerprint: str) -> Any:
    """Columns `input_ids` (int32), `prompt_len` (int32) and `doc_hash` (uint64), cached under `fingerprint`."""
    import datasets

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        ids, prompt_len, hashes = encode_pairs(batch["prompt"], batch["answer"], tokenizer)
        return {"input_ids": ids, "prompt_len": prompt_len, "doc_hash": np.asarray(hashes, dtype=np.uint64)}

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "prompt_len": datasets.Value("int32"), "doc_hash": datasets.Value("uint64")})
    return documents.map(encode, batched=True, batch_size=1000, remove_columns=documents.column_names,
                         features=features, new_fingerprint=fingerprint, desc="Tokenizing prompt/answer records")


def cut_example(ids: np.ndarray, prompt_len: int, seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """One record's ids -> right-padded inputs, answer-only labels and attention mask, each [seq_len]."""
    limit = seq_len + 1
    prompt, answer = ids[:prompt_len], ids[prompt_len:]
    if len(prompt) + len(answer) > limit:
        keep = max(limit - len(answer), min(len(prompt), 1))
        prompt = prompt[len(prompt) - keep:]
        answer = answer[:limit - len(prompt)]
    tokens = np.concatenate([prompt, answer]).astype(np.int64)
    n = len(tokens)
    full = np.full(limit, pad_id, dtype=np.int64)
    full[:n] = tokens
    labels = full[1:].copy()
    target = np.arange(1, limit)
    labels[(target < len(prompt)) | (target >= n)] = -100
    mask = (np.arange(seq_len) < n).astype(np.int64)
    return {"input_ids": torch.from_numpy(full[:-1].copy()), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(mask)}


class Examples(torch.utils.data.Dataset):
    """The selected records as fixed-length examples (see module docstring)."""

    def __init__(self, tokenized: Any, selected: np.ndarray, seq_len: int, pad_id: int,
                 max_items: int | None = None) -> None:
        self._tokenized = tokenized
        rows = np.flatnonzero(np.asarray(selected, dtype=bool))
        self._rows = rows if max_items is None else rows[:max_items]
        self.seq_len, self.pad_id = int(seq_len), int(pad_id)
        self.num_documents = len(rows)
        """Records selected (before the max_items cap), like PackedBlocks.num_documents."""
        lengths = pc.list_value_length(tokenized.data.column("input_ids")).to_numpy()
        self.num_tokens = int(lengths[rows].sum())

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, index: int) -> tuple[np.ndarray, int]:
        row = self._tokenized[int(self._rows[index])]
        return np.asarray(row["input_ids"], dtype=np.int64), int(row["prompt_len"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range [0, {len(self)})")
        ids, prompt_len = self.record(index)
        return cut_example(ids, prompt_len, self.seq_len, self.pad_id)

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """How often each id is a real input token of an example."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for i in range(len(self)):
            item = self[i]
            counts += np.bincount(item["input_ids"][item["attention_mask"].bool()].numpy(), minlength=vocab_size)
        return counts

    def label_counts(self, vocab_size: int) -> np.ndarray:
        """How often each id is a target (answer tokens and EOS)."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for i in range(len(self)):
            labels = self[i]["labels"]
            counts += np.bincount(labels[labels >= 0].numpy(), minlength=vocab_size)
        return counts
