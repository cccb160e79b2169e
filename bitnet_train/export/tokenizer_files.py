"""The tokenizer, carried into every export.

- native: the tokenizer's own files as bytes (a sentencepiece `tokenizer.model`, or the files a
  transformers tokenizer saves), rebuilt on load by `tokenizer_from_files`.
- transformers: a transformers tokenizer folder. A transformers tokenizer is saved as it is. A
  sentencepiece BPE model is converted with `tokenizers`: its vocabulary and merges (transformers'
  SentencePieceExtractor), byte fallback, and sentencepiece's whitespace handling (a "▁" prepended
  to the text, spaces replaced by "▁", words split before a "▁" that follows a non-"▁"), so the
  ids equal sentencepiece's; sentencepiece's control pieces (<s>, </s>, <pad>) become special tokens
  that text cannot produce (`split_special_tokens`), as in sentencepiece.
- GGUF: token list, scores and types through gguf's own vocabulary readers (export/gguf_format.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bitnet_train.config import ConfigError
from bitnet_train.data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

SP_FILE = "tokenizer.model"


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    if isinstance(tokenizer, SentencePieceTokenizer):
        return "sentencepiece"
    if isinstance(tokenizer, HFTokenizer):
        return "transformers"
    raise ConfigError(f"tokenizer {tokenizer!r} is neither sentencepiece nor transformers; it cannot be exported")


def native_tokenizer_files(tokenizer: Tokenizer, path: Path) -> dict[str, bytes]:
    """{file name: bytes} that `tokenizer_from_files` turns back into the same tokenizer."""
    if tokenizer_kind(tokenizer) == "sentencepiece":
        return {SP_FILE: Path(path).read_bytes()}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer._tok.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tokenizer_from_files(kind: str, files: dict[str, bytes]) -> Tokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        target = Path(tmp) / SP_FILE if kind == "sentencepiece" else Path(tmp)
        return load_tokenizer(target)


def sentencepiece_to_transformers(model_file: Path):
    """A transformers fast tokenizer with sentencepiece's ids for a sentencepiece BPE model."""
    from tokenizers import AddedToken, Regex, Tokenizer as TkTokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extractor = SentencePieceExtractor(str(model_file))
    spec = extractor.proto.trainer_spec
    if spec.model_type != 2:
        raise ConfigError(f"sentencepiece model {model_file} is not BPE (model_type={spec.model_type}); only BPE "
                          "models convert to a transformers tokenizer here")
    if extractor.proto.normalizer_spec.precompiled_charsmap:
        raise ConfigError(f"sentencepiece model {model_file} normalizes text (rule "
                          f"{extractor.proto.normalizer_spec.name!r}); only identity normalization converts exactly")
    parts = extractor.extract(None)
    tok = TkTokenizer(BPE(vocab=parts["vocab"], merges=parts["merges"], unk_token=spec.unk_piece, fuse_unk=True,
                          byte_fallback=spec.byte_fallback))
    steps = [normalizers.Replace(" ", "▁")]
    if extractor.proto.normalizer_spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?<!▁)▁"), behavior="merged_with_next")
    strip = [decoders.Strip(content=" ", left=1)] if extractor.proto.normalizer_spec.add_dummy_prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    tok.add_special_tokens([AddedToken(t.content, normalized=False, special=True)
                            for t in parts["additional_special_tokens"]])
    pieces = {p.piece for p in extractor.proto.pieces}
    special = {}
    for key, piece, pid in (("unk_token", spec.unk_piece, spec.unk_id), ("bos_token", spec.bos_piece, spec.bos_id),
                            ("eos_token", spec.eos_piece, spec.eos_id), ("pad_token", spec.pad_piece, spec.pad_id)):
        if pid >= 0 and piece in pieces:
            special[key] = piece
    return PreTrainedTokenizerFast(tokenizer_object=tok, split_special_tokens=True, clean_up_tokenization_spaces=False,
                                   **special)


def save_transformers_tokenizer(tokenizer: Tokenizer, path: Path, out_dir: Path) -> None:
    """Write the tokenizer's transformers files into out_dir."""
    if tokenizer_kind(tokenizer) == "sentencepiece":
        sentencepiece_to_transformers(Path(path)).save_pretrained(str(out_dir))
    else:
        tokenizer._tok.save_pretrained(str(out_dir))
