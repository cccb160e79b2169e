"""CPU decoding speed of one model in every runtime, side by side: llama.cpp (GGUF TQ2_0 and TQ1_0,
through llama-cpp-python), our runtime (bitnet_train.infer on the native export), and the same shape
in full precision (fp32 linears), at the tiny shape and a larger one.

    python tools/bench_decode.py [--shapes tiny d2048] [--new-tokens 128] [--rounds 3] [--threads 1]

Each model decodes greedily with its KV cache, batch 1, a 32-token prompt then --new-tokens tokens;
only the decoding steps after the prompt are timed (each step: next token from the logits, one
forward with the cache); rounds interleave the runtimes so that all see the same machine load, and the
best round counts.
Weights are random (the speed does not depend on them); every model is built from one checkpoint.
Shapes: `tiny` is conf/model/tiny.yaml (the default model), `d2048` is 8 layers of hidden 2048,
16 heads, SiLU FFN 5632. Results: docs/BENCHMARKS.md. Timings only mean something on a quiet machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitnet_train.config import ModelConfig  # noqa: E402
from bitnet_train.data.tokenizer import SHIPPED_TOKENIZER  # noqa: E402
from bitnet_train.export.gguf_format import write_gguf  # noqa: E402
from bitnet_train.export.native import write_native  # noqa: E402
from bitnet_train.export.source import load_source  # noqa: E402
from bitnet_train.infer.model import load_model  # noqa: E402
from bitnet_train.lit.pretrain import PretrainModule  # noqa: E402
from bitnet_train.models.decoder import CausalLM  # noqa: E402
from bitnet_train.paths import shipped_dir  # noqa: E402

PROMPT = 32
SHAPES = {
    "tiny": {},
    "d2048": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=16, head_dim=None),
}


class LlamaCpp:
    """greedy decoding in llama.cpp, timed like ours: prompt, then one token at a time."""

    def __init__(self, path: Path, n_ctx: int, threads: int):
        import llama_cpp

        # logits_all: scores[i] holds position i (decoding computes one position a step either way)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, logits_all=True,
                                   verbose=False)

    def decode(self, prompt: list[int], new_tokens: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        t = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            self.llm.eval([token])
        assert self.llm.n_tokens == len(prompt) + new_tokens
        return time.perf_counter() - t


class Torch:
    def __init__(self, model):
        self.model = model

    def decode(self, prompt: list[int], new_tokens: int) -> float:
        """the loop of infer/generate.py's greedy decoding, timed after the prompt"""
        with torch.no_grad():
            cache = self.model.new_cache(len(prompt) + new_tokens)
            hidden = self.model.model(torch.tensor([prompt]), cache=cache)[:, -1]
            t = time.perf_counter()
            for _ in range(new_tokens):
                token = self.model.lm_head(hidden).argmax(-1)
                hidden = self.model.model(token[:, None], cache=cache)[:, -1]
            return time.perf_counter() - t


def runtimes(shape: str, tmp: Path, n_ctx: int, threads: int) -> dict:
    torch.manual_seed(0)
    module = PretrainModule({**vars(ModelConfig()), "vocab_size": 4096, **SHAPES[shape]}, {}, {})  # the shipped tokenizer
    ckpt = tmp / f"{shape}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    src = load_source(ckpt, tokenizer=shipped_dir() / SHIPPED_TOKENIZER)
    out = {}
    try:
        import llama_cpp  # noqa: F401

        for qtype in ("tq2_0", "tq1_0"):
            out[f"llama.cpp GGUF {qtype.upper()}"] = LlamaCpp(write_gguf(src, tmp / f"{shape}-{qtype}.gguf", qtype),
                                                              n_ctx, threads)
    except ImportError:
        print("llama_cpp is not importable (pip install 'bitnet_train[llama]'): llama.cpp rows left out")
    runtime, _, _ = load_model(write_native(src, tmp / f"{shape}.safetensors"))
    out["ours (native export, bitnet_train.infer)"] = Torch(runtime)
    fp = CausalLM(src.model_cfg).eval()
    fp.load_state_dict({k: v for k, v in src.model.state_dict().items() if ".input_norm." not in k}, strict=False)
    out["full precision (fp32, torch)"] = Torch(fp)
    return out, src.model_cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--new-tokens", type=int, default=128, help="decoding steps timed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="threads for torch and llama.cpp alike")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            models, m = runtimes(shape, Path(tmp), PROMPT + args.new_tokens + 8, args.threads)
            prompt = torch.randint(3, m.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
            for model in models.values():
                model.decode(prompt, 2)  # warm-up
            best = {label: math.inf for label in models}
            for _ in range(args.rounds):
                for label, model in models.items():
                    best[label] = min(best[label], model.decode(prompt, args.new_tokens))
            steps = args.new_tokens
            fp = steps / best["full precision (fp32, torch)"]
            print(f"\n{shape}: {m.num_hidden_layers} layers x {m.hidden_size} hidden, FFN {m.intermediate_size} "
                  f"({m.hidden_act}), vocab {m.vocab_size}; {args.threads} threads; {PROMPT}-token prompt + "
                  f"{args.new_tokens} new tokens, greedy, KV cache; decoding steps after the prompt, best of "
                  f"{args.rounds}")
            print("| runtime | tokens / s | vs full precision |")
            print("|---|---|---|")
            for label, seconds in best.items():
                tps = steps / seconds
                print(f"| {label} | {tps:.1f} | {tps / fp:.2f}x |")


if __name__ == "__main__":
    main()
