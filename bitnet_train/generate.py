"""`python -m bitnet_train.generate MODEL --prompt "..."`: generate text with a native export.

MODEL is a native export (`python -m bitnet_train.export ... --format native`). Greedy by default;
`--temperature T` samples, `--top-p P` restricts sampling to the nucleus. Decoding keeps a KV cache
and runs the packed ternary layers (Triton kernel on CUDA, the torch reference on CPU); `--kv-bits 4`
(or 3) keeps the cache in 4-bit (3-bit) codes per head and token (BitNet a4.8's low-bit KV cache).
Mistakes end with one line on stderr (`error: ...`) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from bitnet_train.config import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bitnet_train.generate", description=__doc__.splitlines()[0])
    p.add_argument("model", help="native export (.safetensors)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"), help="ternary matmul implementation")
    p.add_argument("--bos", action="store_true", help="prepend the tokenizer's BOS token to the prompt")
    p.add_argument("--kv-bits", type=int, default=None,
                   help="quantize keys and values to this many bits (2-8); 0 = full precision; default: as exported")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    import torch

    from bitnet_train.infer.generate import generate
    from bitnet_train.infer.model import load_model

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError(f"--temperature={args.temperature} must be >= 0 and --top-p={args.top_p} in (0, 1]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available; use --device cpu")
    if args.kv_bits is not None and args.kv_bits != 0 and not 2 <= args.kv_bits <= 8:
        raise ConfigError(f"--kv-bits={args.kv_bits} must be 0 (full precision) or 2..8")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, tokenizer, native = load_model(args.model, args.device, dtype, args.backend)
    if args.kv_bits is not None:
        model.set_kv_bits(args.kv_bits or None)
    ids = tokenizer.encode_batch([args.prompt])[0]
    if args.bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id] + ids
    if not ids:
        raise ConfigError("--prompt encodes to no tokens; give some text (or --bos)")
    limit = native.model_cfg.max_position_embeddings
    if len(ids) + args.max_new_tokens > limit:
        raise ConfigError(f"prompt ({len(ids)} tokens) + --max-new-tokens={args.max_new_tokens} exceeds the model's "
                          f"{limit} positions")
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    out = generate(model, torch.tensor([ids], device=args.device), args.max_new_tokens, args.temperature, args.top_p,
                   eos_id=tokenizer.eos_id, generator=generator)
    new = [t for t in out[0, len(ids):].tolist() if t != tokenizer.eos_id]
    prompt_ids = ids[1:] if args.bos and tokenizer.bos_id is not None else ids
    return tokenizer.decode(prompt_ids + new)  # decoded together: the first new piece keeps its leading space


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        text = run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(text)


if __name__ == "__main__":
    main()
