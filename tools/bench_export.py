"""Export sizes (bits per weight, file size vs a bf16 checkpoint) and CPU decoding speed of an export.

    python tools/bench_export.py [--model bitnet_b158_2b4t] [--decode-model tiny] [--checkpoint CKPT]
                                 [--threads 1] [--new-tokens 128]

1. Sizes, from shapes only: the model config (conf/model/NAME.yaml) is built on torch's meta device
   and quantized there, so no weight is allocated; each format's size is summed from the tensor
   shapes with that format's layout (kernels/packing.py, GGUF block sizes); full-precision tensors
   in bf16 (native, transformers), f16 embeddings and f32 norms (GGUF). The same formulas are then
   checked against real exports of a small model (the file size minus the format's header).
2. Decoding: tokens per second on CPU for greedy decoding with a KV cache (a 32-token prompt, then
   --new-tokens tokens, batch 1, best of 3 interleaved rounds, --threads 1 by default: torch's int8
   matmul on several threads stalls badly when other processes share the cores), for the native export run by bitnet_train.infer
   (int8 x ternary integer matmul), the training-time model (fake-quantized BitLinear) and the
   same model in full precision (plain fp32 linears): the tiny config with random weights, or
   --checkpoint's trained ones.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from bitnet_train.config import ModelConfig, QuantConfig, from_mapping
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import bitlinear_modules, quantize_model

QK = 256


def model_config(name: str) -> ModelConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"])
    values = dict(cfg.model)
    if values.get("vocab_size") is None:
        values["vocab_size"] = 4096  # the shipped tokenizer's
    return from_mapping(ModelConfig, "model", values)


def shapes(cfg: ModelConfig, quant: QuantConfig):
    """(ternary [(N, K)], dense [(name, numel)]) of the quantized model, built on the meta device."""
    with torch.device("meta"):
        model = CausalLM(cfg)
        quantize_model(model, quant)
    layers = bitlinear_modules(model)
    ternary = [(m.out_features, m.in_features) for m in layers.values()]
    skip = {f"{n}.weight" for n in layers}
    dense = [(k, v.numel()) for k, v in model.state_dict().items()
             if k not in skip and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    return ternary, dense


def sizes(cfg: ModelConfig, quant: QuantConfig) -> dict[str, tuple[int, int]]:
    """{format: (bytes of the ternary projections, bytes in all)}; scales are one fp32 (bf16 for hf) per matrix."""
    ternary, dense = shapes(cfg, quant)
    dense_bf16 = sum(2 * n for _, n in dense)
    dense_gguf = sum((4 if "norm" in k else 2) * n for k, n in dense)
    n_weights = sum(n * k for n, k in ternary)
    out = {"bf16 checkpoint": (2 * n_weights, 2 * n_weights + dense_bf16)}
    t2 = sum(n * math.ceil(k / 4) + 4 for n, k in ternary)
    t3 = sum(n * math.ceil(k / 5) + 4 for n, k in ternary)
    hf = sum(n // 4 * k + 2 for n, k in ternary)
    out["native 2bit"] = (t2, t2 + dense_bf16)
    out["native base3"] = (t3, t3 + dense_bf16)
    out["transformers (packed bitlinear)"] = (hf, hf + dense_bf16)
    if all(k % QK == 0 for _, k in ternary):
        tq2 = sum(n * k // QK * 66 + 4 for n, k in ternary)
        tq1 = sum(n * k // QK * 54 + 4 for n, k in ternary)
        out["GGUF TQ2_0"] = (tq2, tq2 + dense_gguf)
        out["GGUF TQ1_0"] = (tq1, tq1 + dense_gguf)
    return out


def print_sizes(name: str, cfg: ModelConfig, quant: QuantConfig) -> None:
    table = sizes(cfg, quant)
    ternary, dense = shapes(cfg, quant)
    n_weights = sum(n * k for n, k in ternary)
    n_all = n_weights + sum(n for _, n in dense)
    base = table["bf16 checkpoint"][1]
    print(f"\n{name}: {n_all / 1e9:.3f} B parameters, {n_weights / 1e9:.3f} B of them in ternary projections")
    print("| format | bits / ternary weight | bits / parameter | file size | vs bf16 |")
    print("|---|---|---|---|---|")
    for fmt, (t_bytes, all_bytes) in table.items():
        print(f"| {fmt} | {8 * t_bytes / n_weights:.3f} | {8 * all_bytes / n_all:.3f} | "
              f"{all_bytes / 2**20:,.1f} MiB | {base / all_bytes:.2f}x smaller |")


def check_against_files(tmp: Path) -> None:
    """Real exports of a small model: file size minus header equals the formula."""
    from bitnet_train.export.gguf_format import write_gguf
    from bitnet_train.export.native import write_native
    from bitnet_train.export.source import load_source
    from bitnet_train.lit.pretrain import PretrainModule

    shape = dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
    module = PretrainModule(shape, {}, {})
    ckpt = tmp / "small.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    from bitnet_train.data.tokenizer import SHIPPED_TOKENIZER
    from bitnet_train.paths import shipped_dir

    src = load_source(ckpt, tokenizer=shipped_dir() / SHIPPED_TOKENIZER)
    expect = sizes(src.model_cfg, src.quant_cfg)
    tok_bytes = (shipped_dir() / SHIPPED_TOKENIZER).stat().st_size
    print("\ncheck against real files (small model, 256 hidden, 2 layers): payload = file - header - tokenizer")
    for fmt, packing in (("native 2bit", "2bit"), ("native base3", "base3")):
        path = write_native(src, tmp / f"{packing}.safetensors", packing=packing, dense_dtype="bfloat16")
        header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        payload = path.stat().st_size - header - tok_bytes
        print(f"  {fmt}: formula {expect[fmt][1]:,} bytes, file payload {payload:,} bytes")
    import warnings

    import gguf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_gguf(src, tmp / "m.gguf", dense_dtype="float16")
    reader = gguf.GGUFReader(str(path))
    payload = sum(int(t.n_bytes) for t in reader.tensors)
    print(f"  GGUF TQ2_0: formula {expect['GGUF TQ2_0'][1]:,} bytes, tensor data in file {payload:,} bytes")


def decode_speed(cfg: ModelConfig, checkpoint: str | None, new_tokens: int, tmp: Path) -> None:
    from bitnet_train.data.tokenizer import SHIPPED_TOKENIZER
    from bitnet_train.export.native import write_native
    from bitnet_train.export.source import load_source
    from bitnet_train.infer.generate import generate
    from bitnet_train.infer.model import load_model
    from bitnet_train.lit.pretrain import PretrainModule
    from bitnet_train.paths import shipped_dir

    if checkpoint is None:
        torch.manual_seed(0)
        module = PretrainModule({**vars(cfg)}, {}, {})
        checkpoint = tmp / "tiny.ckpt"
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, checkpoint)
        src = load_source(checkpoint, tokenizer=shipped_dir() / SHIPPED_TOKENIZER)
    else:
        src = load_source(checkpoint)
    runtime, _, _ = load_model(write_native(src, tmp / "tiny.safetensors"))
    fp = CausalLM(src.model_cfg).eval()
    fp.load_state_dict({k: v for k, v in src.model.state_dict().items() if ".input_norm." not in k}, strict=False)
    prompt = torch.randint(3, src.model_cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))

    models = {"native export (packed 2-bit, int8 x ternary matmul)": runtime,
              "training-time model (fake-quantized BitLinear)": src.model,
              "full precision (fp32 linears, same shape)": fp}
    best = {label: math.inf for label in models}
    for model in models.values():
        generate(model, prompt, 4)  # warm-up
    for _ in range(3):  # rounds interleave the models, so that all see the same machine load
        for label, model in models.items():
            t = time.perf_counter()
            out = generate(model, prompt, new_tokens)
            best[label] = min(best[label], time.perf_counter() - t)
            assert out.shape[1] == prompt.shape[1] + new_tokens
    rows = [(label, new_tokens / seconds) for label, seconds in best.items()]
    m = src.model_cfg
    print(f"\nCPU decoding, {m.num_hidden_layers} layers x {m.hidden_size} hidden, FFN {m.intermediate_size}, "
          f"vocab {m.vocab_size}; {torch.get_num_threads()} threads; 32-token prompt + {new_tokens} new tokens, greedy, "
          "KV cache, best of 3")
    print("| model | tokens / s | vs full precision |")
    print("|---|---|---|")
    for label, tps in rows:
        print(f"| {label} | {tps:.1f} | {tps / rows[-1][1]:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bitnet_b158_2b4t", help="conf/model/NAME.yaml for the size table")
    p.add_argument("--decode-model", default="tiny", help="conf/model/NAME.yaml for the decoding benchmark")
    p.add_argument("--checkpoint", help="a trained checkpoint for the decoding benchmark (default: random weights)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (decoding one token is latency-bound)")
    p.add_argument("--new-tokens", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    print_sizes(args.model, model_config(args.model), QuantConfig())
    with tempfile.TemporaryDirectory() as tmp:
        check_against_files(Path(tmp))
        decode_speed(model_config(args.decode_model), args.checkpoint, args.new_tokens, Path(tmp))


if __name__ == "__main__":
    main()
