"""Packing: EOS-separated documents cut into shifted blocks, the hash split, unigram perplexity."""

from __future__ import annotations

import math
import shutil

import datasets
import numpy as np
import pytest

from bitnet_train.config import ConfigError
from bitnet_train.data import CausalLMDataModule
from bitnet_train.data.packing import (PackedBlocks, doc_hash, tokenize_documents, unigram_perplexity,
                                       validation_mask)

from datatest_helpers import CharTokenizer


def _tokenized(texts: list[str], parts: int = 1):
    """Tokenize `texts` with the char tokenizer into a dataset made of `parts` arrow chunks."""
    tok = CharTokenizer()
    pieces = np.array_split(np.arange(len(texts)), parts)
    out = [tokenize_documents(datasets.Dataset.from_dict({"text": [texts[i] for i in idx]}), tok, f"t{n}")
           for n, idx in enumerate(pieces)]
    return out[0] if parts == 1 else datasets.concatenate_datasets(out)


def _all_blocks(blocks: PackedBlocks) -> list[list[int]]:
    return [blocks.block(i).tolist() for i in range(len(blocks))]


def test_blocks_are_shifted_with_eos_between_documents():
    tokenized = _tokenized(["ab", "  ", "cde", "f", "gh"])  # the blank document is dropped
    blocks = PackedBlocks(tokenized, np.ones(4, dtype=bool), block_len=4)
    stream = "ab|cde|f|gh|"
    assert blocks.num_tokens == len(stream) and len(blocks) == 3
    for i in range(3):
        item = blocks[i]
        expected = [0 if c == "|" else ord(c) for c in stream[4 * i:4 * i + 4]]
        assert item["input_ids"].tolist() == expected[:-1] and item["labels"].tolist() == expected[1:]
        assert item["input_ids"].dtype.is_floating_point is False and item["input_ids"].dtype.itemsize == 8
    with pytest.raises(IndexError):
        blocks.block(3)


def test_selection_and_cap():
    tokenized = _tokenized(["ab", "cde", "f", "gh"])
    blocks = PackedBlocks(tokenized, np.array([True, False, True, True]), block_len=3, max_blocks=1)
    assert blocks.read(0, blocks.num_tokens).tolist() == [97, 98, 0, 102, 0, 103, 104, 0]
    assert len(blocks) == 1 and blocks.num_documents == 3


@pytest.mark.parametrize("parts", [1, 3])
def test_blocks_match_a_naive_reference(parts):
    rng = np.random.default_rng(0)
    texts = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(0, 30))) for _ in range(300)]
    texts = [t for t in texts if t]
    tokenized = _tokenized(texts, parts)
    assert len(tokenized.data.column("input_ids").chunks) >= parts
    selected = rng.random(len(texts)) < 0.7
    stream = [t for text, keep in zip(texts, selected, strict=True) if keep for t in [ord(c) for c in text] + [0]]
    for block_len in (2, 7, 64):
        blocks = PackedBlocks(tokenized, selected, block_len)
        assert len(blocks) == len(stream) // block_len
        got = [blocks.block(i).tolist() for i in range(len(blocks))]
        assert got == [stream[i * block_len:(i + 1) * block_len] for i in range(len(blocks))]
        used = np.array(stream[:len(blocks) * block_len])
        np.testing.assert_array_equal(blocks.token_counts(128), np.bincount(used, minlength=128))
        labels = used.reshape(len(blocks), block_len)[:, 1:].ravel()
        np.testing.assert_array_equal(blocks.label_counts(128), np.bincount(labels, minlength=128))
        capped = PackedBlocks(tokenized, selected, block_len, max_blocks=3)
        np.testing.assert_array_equal(capped.token_counts(128), np.bincount(used[:3 * block_len], minlength=128))


def test_blocks_survive_pickling():
    import pickle

    blocks = PackedBlocks(_tokenized(["abc", "defg"]), np.ones(2, dtype=bool), block_len=3)
    clone = pickle.loads(pickle.dumps(blocks))
    assert _all_blocks(clone) == _all_blocks(blocks)


def test_validation_mask_is_a_hash_threshold_with_a_fallback():
    texts = [f"document number {i}" for i in range(4000)]
    hashes = np.array([doc_hash(t) for t in texts], dtype=np.uint64)
    mask = validation_mask(hashes, 0.1)
    assert 0.08 < mask.mean() < 0.12
    order = np.random.default_rng(1).permutation(len(texts))
    permuted = validation_mask(hashes[order], 0.1)
    assert {texts[order[j]] for j in np.nonzero(permuted)[0]} == {texts[i] for i in np.nonzero(mask)[0]}
    few = np.array([doc_hash(t) for t in texts[:3]], dtype=np.uint64)
    assert validation_mask(few, 1e-9).sum() == 1  # none below the threshold: the smallest hash
    assert doc_hash("It is a truth universally acknowledged") == 0xC8DD5DE16BB79DE0  # blake2b: same everywhere


def test_unigram_perplexity_hand_example():
    # train tokens 0, 0, 1 with V = 3: p = (2+1, 1+1, 0+1) / (3 + 3) = 1/2, 1/3, 1/6.
    # validation tokens 0 and 2: ppl = exp(-(ln 1/2 + ln 1/6) / 2) = sqrt(12).
    assert unigram_perplexity([2, 1, 0], [1, 0, 1]) == pytest.approx(math.sqrt(12))
    with pytest.raises(ConfigError):
        unigram_perplexity([2, 1, 0], [0, 0, 0])


def test_datamodule_unigram_perplexity_matches_brute_force(small_corpus, make_cfg):
    dm = CausalLMDataModule(make_cfg(files=str(small_corpus), seq_len=64))
    dm.setup("fit")
    vocab = dm.tokenizer.vocab_size
    train = np.zeros(vocab)
    for i in range(len(dm.train_blocks)):
        train += np.bincount(dm.train_blocks.block(i), minlength=vocab)
    val = np.zeros(vocab)
    for i in range(len(dm.val_blocks)):
        val += np.bincount(dm.val_blocks[i]["labels"].numpy(), minlength=vocab)
    p = (train + 1) / (train.sum() + vocab)
    expected = math.exp(-(val * np.log(p)).sum() / val.sum())
    assert dm.unigram_perplexity() == pytest.approx(expected, rel=1e-9)
    assert 50 < expected < vocab


def test_split_is_disjoint_deterministic_and_independent_of_file_order(small_corpus, tmp_path, make_cfg):
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, path in enumerate(sorted(small_corpus.iterdir(), reverse=True)):  # reversed order under new names
        shutil.copyfile(path, renamed / f"{i}.txt")

    def split(folder):
        dm = CausalLMDataModule(make_cfg(files=str(folder), cache_dir=str(tmp_path / f"cache-{folder.name}")))
        dm.setup("fit")
        hashes = dm.tokenized.data.column("doc_hash").to_numpy()
        val = validation_mask(hashes, dm.cfg.val_fraction)
        return dm, set(hashes[val].tolist()), set(hashes[~val].tolist())

    dm_a, val_a, train_a = split(small_corpus)
    dm_b, val_b, train_b = split(renamed)
    assert val_a and not (val_a & train_a)
    assert (val_a, train_a) == (val_b, train_b)
    assert dm_a.val_blocks.num_tokens == dm_b.val_blocks.num_tokens
    assert dm_a.train_blocks.num_tokens == dm_b.train_blocks.num_tokens
    again, *_ = split(small_corpus)
    assert _all_blocks(again.val_blocks) == _all_blocks(dm_a.val_blocks)


def test_too_little_text_for_one_block(tmp_path, make_cfg):
    (tmp_path / "tiny.txt").write_text("A few words.\n\nAnd a few more.\n")
    with pytest.raises(ConfigError, match="less than one block of data.seq_len"):
        CausalLMDataModule(make_cfg(files=str(tmp_path / "tiny.txt"), seq_len=256)).setup("fit")
