"""Shared fixtures for the data tests: small corpora, a tiny second tokenizer, config factories.

Every config points `cache_dir` into a temporary folder and HF_DATASETS_CACHE is redirected
there too, so nothing is written to the user's datasets cache.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bitnet_train.config import DataConfig

from datatest_helpers import austen_text


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """Three .txt files (about 120 KB in all) of Austen paragraphs."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("persuasion", "emma", "prideprejudice"):
        (folder / f"{name}.txt").write_text(austen_text(name, 900), encoding="utf-8")
    return folder


@pytest.fixture
def make_cfg(cache_dir: str):
    """DataConfig with the test cache and small blocks; keyword arguments override."""

    def make(**overrides) -> DataConfig:
        values = {"cache_dir": cache_dir, "seq_len": 32, "batch_size": 4, "val_fraction": 0.05}
        values.update(overrides)
        return DataConfig(**values)

    return make


@pytest.fixture(scope="session")
def tiny_sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320-piece BPE sentencepiece model (byte fallback) trained on one novel's opening."""
    import sentencepiece as spm

    lines = [line for line in austen_text("persuasion", 3000).splitlines() if line.strip()]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=320, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, minloglevel=2)
    path = tmp_path_factory.mktemp("tiny_sp") / "tiny.model"
    path.write_bytes(buffer.getvalue())
    return path
