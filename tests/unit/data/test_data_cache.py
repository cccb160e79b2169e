"""The tokenization cache: reused on a rerun, rebuilt when the tokenizer or the files change.

seq_len is deliberately not part of the cache key: blocks are cut from the cached tokens when
the data module is set up, so a new seq_len re-cuts them without tokenizing again.
"""

from __future__ import annotations

import os

import pytest

from bitnet_train.data import CausalLMDataModule
from bitnet_train.data.tokenizer import SentencePieceTokenizer


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts calls of SentencePieceTokenizer.encode_batch (i.e. actual tokenization work)."""
    calls = []
    original = SentencePieceTokenizer.encode_batch

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(SentencePieceTokenizer, "encode_batch", counting)
    return calls


def _build(cfg) -> CausalLMDataModule:
    dm = CausalLMDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_rerun_reuses_the_cache(small_corpus, make_cfg, encode_calls):
    first = _build(make_cfg(files=str(small_corpus)))
    assert encode_calls
    encode_calls.clear()
    second = _build(make_cfg(files=str(small_corpus)))
    assert encode_calls == []
    assert second.tokenized.cache_files == first.tokenized.cache_files
    assert second.stats() == first.stats()


def test_tokenizer_change_invalidates(small_corpus, make_cfg, encode_calls, tiny_sp_model):
    shipped = _build(make_cfg(files=str(small_corpus)))
    encode_calls.clear()
    tiny = _build(make_cfg(files=str(small_corpus), tokenizer=str(tiny_sp_model)))
    assert encode_calls
    assert tiny.tokenized.cache_files != shipped.tokenized.cache_files
    assert tiny.stats()["vocab_size"] == 320 and tiny.train_blocks.num_tokens > shipped.train_blocks.num_tokens


def test_seq_len_change_recuts_blocks_from_the_cached_tokens(small_corpus, make_cfg, encode_calls):
    short = _build(make_cfg(files=str(small_corpus), seq_len=32))
    encode_calls.clear()
    long = _build(make_cfg(files=str(small_corpus), seq_len=64))
    assert encode_calls == []
    assert long.tokenized.cache_files == short.tokenized.cache_files
    assert long.train_blocks[0]["input_ids"].shape == (64,) and short.train_blocks[0]["input_ids"].shape == (32,)
    assert long.train_blocks.block(0).tolist() == short.train_blocks.read(0, 65).tolist()


def test_changed_file_invalidates(small_corpus, make_cfg, encode_calls):
    _build(make_cfg(files=str(small_corpus)))
    encode_calls.clear()
    path = next(small_corpus.iterdir())
    path.write_text(path.read_text() + "\n\nA new closing paragraph.\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _build(make_cfg(files=str(small_corpus)))
    assert encode_calls
