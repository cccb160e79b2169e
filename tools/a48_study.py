"""A small study of 4-bit activations on the shipped corpus: BitNet b1.58, a4.8 and v2, and a low-bit KV cache.

    python tools/a48_study.py                      # trains the four runs, then evaluates and prints the tables
    python tools/a48_study.py --analyze-only       # tables from the finished runs

Runs (same model shape, seed, data order and number of steps; only the activation quantization differs):

  b158    BitNet b1.58: int8 absmax into every projection
  a48     BitNet a4.8 as +experiment=pretrain_a48_tiny trains it: b1.58 (8-bit) for the first 95% of the
          steps, then INT4 into q/k/v and gate/up, top-K 50% + INT8 into o_proj, INT8 into down_proj
  v2_a8   BitNet v2 with 8-bit activations: Hadamard-rotated inputs of o_proj and down_proj
  v2_a4   BitNet v2 as +experiment=pretrain_v2_a4_tiny trains it: v2_a8 for 95% of the steps, then
          INT4 (absmean) into every projection

Each run is `python -m bitnet_train` in its own process (outputs under --out/NAME). Afterwards every
model is evaluated on the same validation blocks: perplexity as trained, then with keys and values
quantized to 4 and 3 bits per head (quant.kv_bits; no retraining), and the activation sparsity per
projection type as BitNet a4.8's Table 2 counts it (bitnet_train/quant/sparsity.py). The evaluation
without KV quantization is checked against the run's own metrics.json. Results go to --out/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# Small enough that four runs of 500 steps fit in about 20 minutes on one busy CPU core; intermediate
# size a power of two so that BitNet v2 rotates the whole down_proj input with one Hadamard transform.
# The papers' relu^2 FFN in every run (a4.8's top-K relies on its sparsity), and the settings the
# study was made with before the tiny defaults changed (unit sub-norm gains, lr 1.5e-3; docs/RESULTS.md).
SHAPE = ["model.hidden_size=128", "model.intermediate_size=512", "model.num_hidden_layers=4",
         "model.num_attention_heads=4", "model.num_key_value_heads=4", "model.hidden_act=relu2",
         "data.seq_len=128", "data.batch_size=8", "data.max_val_blocks=64",
         "quant.norm_gain_init=1.0", "optim.lr=1.5e-3"]
RUNS = {
    "b158": ["quant=b158"],
    "a48": ["+experiment=pretrain_a48_tiny"],
    "v2_a8": ["quant=v2_a8"],
    "v2_a4": ["+experiment=pretrain_v2_a4_tiny"],
}
KV_BITS = (None, 4, 3)
# BitNet a4.8, Table 2 (valid set of C4): sparsity (%) per projection type, 700M and 7B
PAPER = {
    "b1.58 700M (paper)": {"qkv": 1.2, "out": 5.9, "up": 1.2, "gate": 1.2, "down": 21.8, "overall": 6.2},
    "a4.8 700M (paper)": {"qkv": 12.1, "out": 50.0, "up": 66.2, "gate": 12.1, "down": 80.9, "overall": 42.5},
    "a4.8 7B (paper)": {"qkv": 12.1, "out": 50.0, "up": 71.4, "gate": 12.0, "down": 84.2, "overall": 44.5},
}


def train(name: str, args: argparse.Namespace) -> None:
    out = Path(args.out) / name
    if (out / "metrics.json").is_file() and not args.force:
        print(f"[{name}] done already ({out}); --force to rerun", flush=True)
        return
    if out.exists():  # a fresh folder: Lightning would otherwise write last-v1.ckpt beside the old last.ckpt
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "bitnet_train", *RUNS[name], *SHAPE, f"trainer.max_steps={args.steps}",
           f"trainer.val_check_interval={args.steps}", f"callbacks.checkpoint.every_n_train_steps={args.steps}",
           "callbacks.progress=null", "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           f"seed={args.seed}", f"hydra.run.dir={out}", f"task_name={name}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    print(f"[{name}] {' '.join(cmd[3:])}", flush=True)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] failed (exit {proc.returncode}); see {out / 'train.log'}")
    print(f"[{name}] finished in {time.perf_counter() - started:.0f} s", flush=True)


@torch.no_grad()
def evaluate(name: str, args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    from bitnet_train.data import CausalLMDataModule
    from bitnet_train.lit.checkpoint_io import load_checkpoint_file
    from bitnet_train.lit.pretrain import PretrainModule
    from bitnet_train.quant.sparsity import ActivationSparsity

    out = Path(args.out) / name
    cfg = OmegaConf.load(out / "config_resolved.yaml")
    ckpt = load_checkpoint_file(out / "checkpoints" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    module = PretrainModule(hp["model"], hp["quant"], hp["optim"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    data = CausalLMDataModule(OmegaConf.to_container(cfg.data, resolve=True))
    data.setup("validate")
    row: dict = {"run": name, "metrics_val_ppl": json.loads((out / "metrics.json").read_text())["val_perplexity"]}
    for bits in KV_BITS:
        module.model.set_kv_bits(bits)
        total, count = 0.0, 0
        sparsity = ActivationSparsity(module.model) if bits is None else None
        with sparsity if sparsity is not None else contextlib.nullcontext():
            for batch in data.val_dataloader():
                n = int((batch["labels"] != -100).sum())
                total += float(module._loss(batch)) * n
                count += n
        row[f"val_ppl_kv{bits or 'fp'}"] = math.exp(total / count)
        if sparsity is not None:
            row["sparsity"] = sparsity.report()
    module.model.set_kv_bits(None)
    print(f"[{name}] ppl {row['val_ppl_kvfp']:.3f} (metrics.json {row['metrics_val_ppl']:.3f}), "
          f"4-bit KV {row['val_ppl_kv4']:.3f}, 3-bit KV {row['val_ppl_kv3']:.3f}", flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| run | val ppl | with 4-bit KV | with 3-bit KV |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['val_ppl_kvfp']:.2f} | {r['val_ppl_kv4']:.2f} | {r['val_ppl_kv3']:.2f} |")
    lines += ["", "| model | QKV | Out | Up | Gate | Down | Overall |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["sparsity"]
        lines.append(f"| {r['run']} (here) | " + " | ".join(f"{100 * s[k]:.1f}" for k in
                                                       ("qkv", "out", "up", "gate", "down", "overall")) + " |")
    for name, s in PAPER.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[k]:.1f}" for k in ("qkv", "out", "up", "gate", "down", "overall"))
                     + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/a48_study")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per run (runs go one after another)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--analyze-only", action="store_true")
    args = p.parse_args()
    if not args.analyze_only:
        for name in args.runs:
            train(name, args)
    torch.set_num_threads(args.threads)
    rows = [evaluate(name, args) for name in args.runs]
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
