"""`python -m bitnet_train.consolidate CKPT [OUT]`: one Lightning checkpoint from any strategy's checkpoint.

CKPT is a single-process or DDP `.ckpt` file, an FSDP2 checkpoint folder or a DeepSpeed ZeRO-2/3
checkpoint folder. OUT (default: beside CKPT, `<name>-consolidated.ckpt`) holds the full fp32
weights under PretrainModule's names and the run's hyper_parameters: load it with
`PretrainModule.load_from_checkpoint(OUT)`, export it, evaluate it. Runs in one process, no GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bitnet_train.config import ConfigError


def default_output(src: Path) -> Path:
    name = src.name[:-len(".ckpt")] if src.name.endswith(".ckpt") else src.name
    return src.parent / f"{name}-consolidated.ckpt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitnet_train.consolidate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt file or an FSDP2 / DeepSpeed checkpoint folder")
    parser.add_argument("output", type=Path, nargs="?", help="output .ckpt (default: <name>-consolidated.ckpt beside it)")
    args = parser.parse_args(argv)
    from bitnet_train.lit.run_checkpoints import consolidate

    output = args.output or default_output(args.checkpoint)
    try:
        if output.exists() and output.resolve() == args.checkpoint.resolve():
            raise ConfigError(f"output {output} is the input checkpoint; name another file")
        result = consolidate(args.checkpoint, output)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in result["state_dict"].values())
    print(f"{output}: {len(result['state_dict'])} tensors ({n / 1e6:.2f}M values), step {result.get('global_step')}, "
          f"from a {result['consolidated_from']['kind']} checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
