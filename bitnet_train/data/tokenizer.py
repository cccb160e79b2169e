"""Tokenizers behind one small interface: a sentencepiece .model file or a transformers folder.

`load_tokenizer(path)` picks the implementation (None -> the shipped Austen tokenizer). Each
exposes ids for EOS/BOS/PAD, batched encoding without special tokens, decoding, and a
`fingerprint` (a hash of its files) that keys the tokenization cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from bitnet_train.config import ConfigError
from bitnet_train.paths import shipped_dir

SHIPPED_TOKENIZER = "tokenizer/austen_sp4096.model"
# Files in a transformers folder that are model weights, not tokenizer data (kept out of the hash).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                       "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int
    bos_id: int | None
    pad_id: int
    fingerprint: str

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of a list of ids."""
        ...


def _hash_files(files: list[Path], root: Path) -> str:
    """Hash of the names (relative to root) and contents of files."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class SentencePieceTokenizer:
    """A sentencepiece model file; pad falls back to EOS when the model has no pad piece."""

    def __init__(self, path: str | Path) -> None:
        import sentencepiece as spm

        path = Path(path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as err:
            raise ConfigError(
                f"data.tokenizer={str(path)!r} is not a sentencepiece model ({str(err).splitlines()[0]}); "
                "give a .model file or a transformers tokenizer folder") from None
        self.name = path.stem
        self.vocab_size = self._sp.get_piece_size()
        if self._sp.eos_id() < 0:
            raise ConfigError(f"data.tokenizer={str(path)!r} has no EOS piece; train it with eos_id set")
        self.eos_id = self._sp.eos_id()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
        self.fingerprint = "sp-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.name!r}, vocab_size={self.vocab_size})"


class HFTokenizer:
    """A local transformers tokenizer folder (AutoTokenizer, no remote code, no network)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not any((path / name).is_file() for name in _HF_TOKENIZER_FILES):
            raise ConfigError(
                f"data.tokenizer={str(path)!r} is a folder without tokenizer files (none of "
                f"{', '.join(_HF_TOKENIZER_FILES)}); give a transformers tokenizer folder or a sentencepiece "
                ".model file")
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        except Exception as err:  # transformers raises many types (OSError, ValueError, KeyError...)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(
                f"data.tokenizer={str(path)!r} could not be loaded by transformers' AutoTokenizer "
                f"({type(err).__name__}: {first[:200]})") from None
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise ConfigError(
                f"data.tokenizer={str(path)!r} defines no eos_token (or sep_token) to separate documents; "
                "set eos_token in its tokenizer_config.json")
        tok.model_max_length = int(1e30)  # documents are longer than a context; we pack them ourselves
        self._tok = tok
        self.name = path.resolve().name
        self.vocab_size = len(tok)
        self.eos_id = int(eos)
        self.bos_id = None if tok.bos_token_id is None else int(tok.bos_token_id)
        self.pad_id = self.eos_id if tok.pad_token_id is None else int(tok.pad_token_id)
        files = [p for p in path.iterdir() if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES)]
        self.fingerprint = "hf-" + _hash_files(files, path)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """A sentencepiece .model file, a transformers tokenizer folder, or None for the shipped one."""
    if path is None:
        path = shipped_dir() / SHIPPED_TOKENIZER
        if not path.is_file():
            raise ConfigError(f"the shipped tokenizer {path} is missing; reinstall bitnet_train or set data.tokenizer")
    path = Path(path).expanduser()
    if path.is_dir():
        return HFTokenizer(path)
    if path.is_file():
        return SentencePieceTokenizer(path)
    raise ConfigError(
        f"data.tokenizer={str(path)!r} does not exist; give a sentencepiece .model file, a transformers "
        "tokenizer folder, or null for the shipped tokenizer")
