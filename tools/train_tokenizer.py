"""Train a sentencepiece tokenizer (BPE by default, byte fallback) on .txt / .txt.gz files.

Each non-blank line of the inputs is one training sentence. Training is deterministic: all
sentences are used in file order (no sampling or shuffling), one thread, a fixed random seed.
The shipped tokenizer was made with (see data/README.md):

    python tools/train_tokenizer.py 'data/austen/*.txt.gz' --vocab-size 4096 \
        --output data/tokenizer/austen_sp4096.model

Special ids: unk=0 (<unk>), bos=1 (<s>), eos=2 (</s>), pad=3 (<pad>). Normalization is the
identity and whitespace is kept, so decode(encode(text)) == text for any text.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import os
import sys
from pathlib import Path
from typing import Iterator

import sentencepiece as spm

SUFFIXES = (".txt", ".txt.gz")


def resolve_inputs(patterns: list[str]) -> list[Path]:
    """Files, directories (searched recursively) or globs -> sorted list of .txt/.txt.gz files."""
    found: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            candidates = [p for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            candidates = [path]
        else:
            candidates = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        found.update(p.resolve() for p in candidates if p.name.endswith(SUFFIXES))
    if not found:
        raise SystemExit(f"error: no .txt or .txt.gz file matches {' '.join(patterns)}")
    return sorted(found)


def iter_lines(files: list[Path]) -> Iterator[str]:
    """Non-blank lines of every file, in order, without their line breaks."""
    for path in files:
        raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
        with io.TextIOWrapper(raw, encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line


def train(files: list[Path], vocab_size: int, output: Path, model_type: str, character_coverage: float,
          seed: int) -> None:
    """Train and write `output` (a .model file); the .vocab listing is not kept."""
    spm.set_random_generator_seed(seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # a writer instead of a model_prefix keeps temp paths out of the file
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_lines(files),
        model_writer=buffer,
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    output.write_bytes(buffer.getvalue())


def report(files: list[Path], model: Path) -> str:
    """Corpus size in tokens and tokens per character under the new model (whole files encoded)."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    chars = tokens = 0
    for path in files:
        raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
            text = handle.read()
        chars += len(text)
        tokens += len(sp.encode(text))
    return (f"{model}: vocab {sp.get_piece_size()}, {len(files)} files, {chars} chars, "
            f"{tokens} tokens, {tokens / max(chars, 1):.4f} tokens/char")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="files, directories or quoted globs of .txt/.txt.gz")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--output", type=Path, required=True, help="where to write the .model file")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    parser.add_argument("--character-coverage", type=float, default=0.99995)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error("--vocab-size must be at least 300 (256 byte pieces + specials + characters)")
    files = resolve_inputs(args.inputs)
    train(files, args.vocab_size, args.output, args.model_type, args.character_coverage, args.seed)
    print(report(files, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
