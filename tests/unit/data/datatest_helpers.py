"""Helpers shared by the data tests (imported by name; conftest.py holds the fixtures)."""

from __future__ import annotations

import gzip

from bitnet_train.paths import shipped_dir

AUSTEN = shipped_dir() / "austen"


def austen_text(name: str, lines: int | None = None) -> str:
    """Text of a shipped novel (e.g. "persuasion"), optionally only its first `lines` lines."""
    text = gzip.open(AUSTEN / f"{name}.txt.gz", "rt", encoding="utf-8", newline="").read()
    if lines is None:
        return text
    return "".join(text.splitlines(keepends=True)[:lines])


class CharTokenizer:
    """One token per character (its code point), EOS = 0: makes expected blocks easy to write."""

    name, vocab_size, eos_id, bos_id, pad_id, fingerprint = "chars", 128, 0, None, 0, "chars-v1"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [[ord(c) for c in text] for text in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) if i else "|" for i in ids)
