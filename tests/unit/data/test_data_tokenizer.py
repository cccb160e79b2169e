"""Tokenizers: the shipped sentencepiece model, a transformers folder, and their errors."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from bitnet_train.config import ConfigError
from bitnet_train.data import Tokenizer, load_tokenizer
from bitnet_train.data.tokenizer import HFTokenizer, SentencePieceTokenizer
from bitnet_train.paths import shipped_dir

from datatest_helpers import AUSTEN, austen_text


def test_shipped_tokenizer_ids_and_identity():
    tok = load_tokenizer(None)
    assert isinstance(tok, SentencePieceTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.name) == (4096, "austen_sp4096")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert 0 not in tok.encode_batch(["\x00 unseen \u2603"])[0]  # byte fallback: no <unk> (id 0)
    assert tok.fingerprint == load_tokenizer(None).fingerprint and tok.fingerprint.startswith("sp-")


@pytest.mark.parametrize("name", sorted(p.name[:-len(".txt.gz")] for p in AUSTEN.glob("*.txt.gz")))
def test_shipped_tokenizer_round_trips_the_corpus(name):
    tok = load_tokenizer(None)
    text = austen_text(name)
    ids = tok.encode_batch([text])[0]
    assert tok.decode(ids) == text
    assert 0.2 < len(ids) / len(text) < 0.35  # about 0.27 tokens per character
    paragraphs = text.split("\n\n")[:200]
    assert [tok.decode(x) for x in tok.encode_batch(paragraphs)] == paragraphs


def test_encode_adds_no_special_tokens_and_round_trips_odd_text():
    tok = load_tokenizer(None)
    texts = ["  two leading spaces", "tab\tand\nnewline", "café 日本 🙂", ""]
    encoded = tok.encode_batch(texts)
    assert all(tok.eos_id not in ids and tok.bos_id not in ids for ids in encoded)
    assert [tok.decode(ids) for ids in encoded] == texts


def test_fingerprint_depends_on_content_not_path(tmp_path, tiny_sp_model):
    copy = tmp_path / "renamed.model"
    shutil.copyfile(shipped_dir() / "tokenizer" / "austen_sp4096.model", copy)
    assert load_tokenizer(copy).fingerprint == load_tokenizer(None).fingerprint
    assert load_tokenizer(tiny_sp_model).fingerprint != load_tokenizer(None).fingerprint


def _hf_folder(path: Path, with_pad: bool = True) -> Path:
    from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<unk>", "<pad>", "</s>"] if with_pad else ["<unk>", "</s>"]
    raw.train_from_iterator(austen_text("persuasion", 400).splitlines(),
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    from tokenizers import decoders

    raw.decoder = decoders.ByteLevel()
    kwargs = {"pad_token": "<pad>"} if with_pad else {}
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>", **kwargs).save_pretrained(path)
    return path


def test_transformers_folder(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    tok = load_tokenizer(str(folder))
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert tok.name == "hf" and tok.bos_id is None
    assert tok.eos_id == 2 and tok.pad_id == 1 and tok.vocab_size >= 260
    ids = tok.encode_batch(["It was a truth.", "Anne Elliot"])
    assert all(tok.eos_id not in x for x in ids)
    assert tok.decode(ids[0]) == "It was a truth."
    before = tok.fingerprint
    (folder / "model.safetensors").write_bytes(b"weights are not part of the tokenizer")
    assert load_tokenizer(folder).fingerprint == before
    (folder / "special_tokens_map.json").write_text('{"eos_token": "</s>", "unk_token": "<unk>"}')
    assert load_tokenizer(folder).fingerprint != before


def test_transformers_folder_without_pad_uses_eos(tmp_path):
    tok = load_tokenizer(_hf_folder(tmp_path / "nopad", with_pad=False))
    assert tok.pad_id == tok.eos_id


def test_missing_path(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; give a sentencepiece \.model file"):
        load_tokenizer(tmp_path / "nope.model")


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "notes.model"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="is not a sentencepiece model"):
        load_tokenizer(path)


def test_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(ConfigError, match="folder without tokenizer files"):
        load_tokenizer(tmp_path)


def test_folder_with_broken_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="could not be loaded by transformers"):
        load_tokenizer(tmp_path)


def test_train_tokenizer_tool_reproduces_the_shipped_model(tmp_path, capsys):
    tool = Path(__file__).resolve().parents[3] / "tools" / "train_tokenizer.py"
    if not tool.is_file():
        pytest.skip("tools/ exists only in a checkout")
    spec = importlib.util.spec_from_file_location("train_tokenizer_tool", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "sp.model"
    assert module.main([str(AUSTEN / "*.txt.gz"), "--vocab-size", "4096", "--output", str(out)]) == 0
    assert out.read_bytes() == (shipped_dir() / "tokenizer" / "austen_sp4096.model").read_bytes()
    assert "vocab 4096" in capsys.readouterr().out
