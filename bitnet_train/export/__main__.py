"""`python -m bitnet_train.export CHECKPOINT --format native|hf|gguf --out PATH`: pack a trained model.

CHECKPOINT is a run's Lightning checkpoint (checkpoints/last.ckpt) or a consolidated state dict
(export/source.py says exactly what is accepted and where settings and tokenizer come from).
Mistakes end with one line on stderr (`error: ...`) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from bitnet_train.config import ConfigError

FORMATS = ("native", "hf", "gguf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bitnet_train.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="Lightning .ckpt, or a consolidated .pt/.pth/.bin/.safetensors state dict")
    p.add_argument("--format", required=True, choices=FORMATS, help="native safetensors, transformers folder, or GGUF")
    p.add_argument("--out", required=True, help="FILE.safetensors (native), a folder (hf), FILE.gguf (gguf)")
    p.add_argument("--config", help="YAML/JSON with 'model' and 'quant' sections when the checkpoint lacks them")
    p.add_argument("--tokenizer", help="sentencepiece .model or transformers folder (default: the run's data.tokenizer)")
    p.add_argument("--packing", default="2bit", choices=("2bit", "base3"), help="native: 2 bits or 1.6 bits per weight")
    p.add_argument("--gguf-type", default="tq2_0", choices=("tq2_0", "tq1_0"), help="gguf: ternary block type")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the full-precision tensors (embeddings, norms, head)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def check_out(fmt: str, out: str) -> None:
    """Refuse an output path that does not fit the format, before any loading."""
    from pathlib import Path

    path = Path(out)
    if fmt == "native" and path.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors for --format native")
    if fmt == "gguf" and path.suffix != ".gguf":
        raise ConfigError(f"--out {out} must end in .gguf for --format gguf")
    if fmt == "hf" and path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file; --format hf writes a folder")


def export(args: argparse.Namespace) -> str:
    from rich.progress import track

    from bitnet_train.export.source import load_source

    def progress(items):
        return items if args.no_progress else track(items, description=f"packing ({args.format})", transient=True)

    check_out(args.format, args.out)
    source = load_source(args.checkpoint, args.config, args.tokenizer, full_precision_ok=args.format == "hf")
    if args.format == "native":
        from bitnet_train.export.native import write_native

        out = write_native(source, args.out, args.packing, args.dtype, progress)
    elif args.format == "hf":
        from bitnet_train.export.hf import write_hf

        out = write_hf(source, args.out, args.dtype, progress)
    else:
        from bitnet_train.export.gguf_format import write_gguf

        out = write_gguf(source, args.out, args.gguf_type, args.dtype, progress, report=lambda line: print(line, file=sys.stderr))
    return str(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.simplefilter("default")
    try:
        out = export(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
