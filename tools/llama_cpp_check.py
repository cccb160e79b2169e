"""Does llama.cpp compute a trained model as we do? Greedy decoding of one checkpoint in llama.cpp (its
GGUF export, through llama-cpp-python) against our runtime (its native export), from prompts cut
out of the shipped corpus.

    python tools/llama_cpp_check.py outputs/default_run/checkpoints/last.ckpt
    python tools/llama_cpp_check.py RUN/checkpoints/last.ckpt --qtypes tq2_0 --new-tokens 128

The GGUF architecture is the exporter's choice for the model (bitnet for sub-norms, llama without).
For every GGUF type and every prompt (--prompt-lengths tokens of one passage from each novel, a
different place each), both runtimes decode --new-tokens tokens greedily with their KV caches. A row
gives the number of leading tokens on which the two greedy strings agree, the largest logit difference
over llama.cpp's decoding steps (ours teacher-forced on llama.cpp's tokens), the logits' std, how
far below our argmax llama.cpp's picks fall (0 when it picks our argmax) and, where the strings part,
our margin between our top two tokens there. Exit status 1 when any
string parts before the end at a step where our top-2 margin exceeds twice that step's largest
difference (a real disagreement, not a near-tie), else 0. Results for the default model:
docs/RUNTIMES.md.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitnet_train.config import ConfigError  # noqa: E402
from bitnet_train.export.gguf_format import write_gguf  # noqa: E402
from bitnet_train.export.native import write_native  # noqa: E402
from bitnet_train.export.source import load_source  # noqa: E402
from bitnet_train.infer.generate import generate  # noqa: E402
from bitnet_train.infer.model import load_model  # noqa: E402
from bitnet_train.paths import shipped_dir  # noqa: E402


def prompts(tokenizer, lengths: list[int]) -> list[list[int]]:
    """One prompt per novel of the shipped corpus, from a third of the way in, of each length in turn."""
    novels = sorted((shipped_dir() / "austen").glob("*.txt.gz"))
    out = []
    for i, path in enumerate(novels):
        text = gzip.open(path, "rt", encoding="utf-8").read()
        start = len(text) // 3
        ids = tokenizer.encode_batch([text[start:start + 8000]])[0]
        out.append(ids[:lengths[i % len(lengths)]])
    return out


def llama_greedy(llm, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    llm.reset()
    llm.eval(prompt)
    tokens, steps = [], []
    for _ in range(n):
        step = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        steps.append(step)
        tokens.append(int(np.argmax(step)))
        llm.eval([tokens[-1]])
    return tokens, np.stack(steps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--qtypes", nargs="+", default=["tq2_0", "tq1_0"], choices=["tq2_0", "tq1_0"])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[8, 48, 120])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokenizer", help="when the run's config is not beside the checkpoint (as for the exporter)")
    args = p.parse_args()
    import llama_cpp

    torch.set_num_threads(args.threads)
    try:
        src = load_source(args.checkpoint, tokenizer=args.tokenizer)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        runtime, tokenizer, _ = load_model(write_native(src, Path(tmp) / "m.safetensors"))
        cases = prompts(tokenizer, args.prompt_lengths)
        n_ctx = max(len(c) for c in cases) + args.new_tokens + 8
        print("| GGUF type | prompt tokens | greedy tokens equal | max logit diff | logit std "
              "| llama.cpp pick below our argmax | our top-2 margin where they part |")
        print("|---|---|---|---|---|---|---|")
        for qtype in args.qtypes:
            gguf = write_gguf(src, Path(tmp) / f"m_{qtype}.gguf", qtype=qtype)
            llm = llama_cpp.Llama(model_path=str(gguf), logits_all=True, n_ctx=n_ctx, n_threads=args.threads,
                                  verbose=False)
            for prompt in cases:
                theirs, their_steps = llama_greedy(llm, prompt, args.new_tokens)
                with torch.no_grad():
                    ours = generate(runtime, torch.tensor([prompt]), args.new_tokens)[0, len(prompt):].tolist()
                    forced = runtime(torch.tensor([prompt + theirs[:-1]]))[0, len(prompt) - 1:].float().numpy()
                diff = np.abs(their_steps - forced).max(-1)
                equal = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), args.new_tokens)
                below = forced.max(-1) - forced[np.arange(args.new_tokens), theirs]
                margin = "-"
                if equal < args.new_tokens:
                    top2 = np.sort(forced[equal])[-2:]
                    failed |= bool(top2[1] - top2[0] > 2 * diff[equal])
                    margin = f"{top2[1] - top2[0]:.4f}"
                print(f"| {qtype} | {len(prompt)} | {equal}/{args.new_tokens} | {diff.max():.4f} | "
                      f"{forced.std():.3f} | {below.max():.4f} | {margin} |")
            llm.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
