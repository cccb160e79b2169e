"""Ternary (BitNet b1.58) against full precision as the model grows: a scaling sweep on the shipped corpus.

    python tools/scaling_study.py                                  # the default sweep, then table and plot
    python tools/scaling_study.py --sizes l --lrs 3e-3 6e-3 --tokens-per-param 2
    python tools/scaling_study.py --analyze-only                   # table and plot from finished runs

For every size (SIZES: hidden width, layers, heads, FFN width; the tokenizer's 4,096-piece vocabulary),
both networks (`ternary`: the default b1.58 model with its sub-norms; `fp`: the same network, the same
modules and norms, at quantization strength 0) train for tokens in proportion to the size's non-embedding parameters (--tokens-per-param), at each
learning rate of --lrs; a cell's result is its best learning rate (each network at its own tuned
rate). Every run is `python -m bitnet_train` with the same seed and data order, in its own folder under
--out. The table (markdown) and a plot of validation loss against non-embedding parameters (PNG) go to
--out; results.json holds every run. The BitNet papers report the ternary/full-precision gap shrinking
as models grow; the last column shows it here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _study_runs import run_training

# name: (hidden, layers, heads, ffn)
# (head width 32 throughout except "l", the default tiny model's shape)
SIZES = {"xs": (64, 2, 2, 192), "s": (128, 4, 4, 384), "m": (192, 4, 6, 512), "l": (256, 4, 4, 768)}
NETWORKS = {"ternary": [], "fp": ["quant.weight_lambda=0", "quant.activation_lambda=0"]}
SEQ_LEN, BATCH = 256, 8


def non_embedding_params(hidden: int, layers: int, ffn: int) -> int:
    """q, k, v, o (hidden x hidden each), gate/up/down (3 x hidden x ffn) and the two norms per layer, final norm."""
    return layers * (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden) + hidden


def steps_for(size: str, tokens_per_param: float) -> int:
    hidden, layers, _, ffn = SIZES[size]
    return max(50, math.ceil(tokens_per_param * non_embedding_params(hidden, layers, ffn) / (SEQ_LEN * BATCH)))


def run_name(size: str, network: str, lr: float) -> str:
    return f"{size}_{network}_lr{lr:g}"


def train(size: str, network: str, lr: float, args: argparse.Namespace) -> Path:
    hidden, layers, heads, ffn = SIZES[size]
    steps = steps_for(size, args.tokens_per_param)
    return run_training(Path(args.out) / run_name(size, network, lr), [
        *NETWORKS[network], *args.extra, f"model.hidden_size={hidden}", f"model.num_hidden_layers={layers}",
        f"model.num_attention_heads={heads}", f"model.num_key_value_heads={heads}", f"model.intermediate_size={ffn}",
        f"data.seq_len={SEQ_LEN}", f"data.batch_size={BATCH}", f"optim.lr={lr}",
        f"optim.warmup_steps={max(1, steps // 10)}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        f"callbacks.checkpoint.every_n_train_steps={steps}", f"seed={args.seed}"], threads=args.threads, force=args.force)


def collect(args: argparse.Namespace) -> list[dict]:
    """Every finished run under --out of the sizes asked for, at whatever learning rates were run."""
    rows = []
    for size in args.sizes:
        hidden, layers, _, ffn = SIZES[size]
        for network in NETWORKS:
            for path in sorted(Path(args.out).glob(f"{size}_{network}_lr*/metrics.json")):
                lr = float(path.parent.name.rsplit("_lr", 1)[1])
                m = json.loads(path.read_text())
                rows.append({"size": size, "network": network, "lr": lr, "val_loss": m["val_loss"],
                             "val_ppl": m["val_perplexity"], "tokens": m["tokens_seen"], "steps": m["steps"],
                             "parameters": m["parameters"], "train_seconds": m["train_seconds"],
                             "non_embedding_parameters": non_embedding_params(hidden, layers, ffn)})
    return rows


def best(rows: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["size"], r["network"])
        if key not in out or r["val_loss"] < out[key]["val_loss"]:
            out[key] = r
    return out


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    cells = best(rows)
    tried: dict[tuple[str, str], set[float]] = {}
    for r in rows:
        tried.setdefault((r["size"], r["network"]), set()).add(r["lr"])

    def cell(c: dict) -> str:
        lrs = tried[(c["size"], c["network"])]
        edge = ", grid edge" if len(lrs) > 1 and c["lr"] in (min(lrs), max(lrs)) else ""
        return f"{c['val_loss']:.3f} ({c['lr']:g}{edge})"

    lines = ["| size | non-emb. params | tokens | learning rates tried | fp: val loss (lr) | ternary: val loss (lr) "
             "| gap (ternary - fp) |", "|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        fp, tern = cells.get((size, "fp")), cells.get((size, "ternary"))
        if fp is None or tern is None:
            continue
        lrs = ", ".join(f"{lr:g}" for lr in sorted(tried[(size, "fp")] | tried[(size, "ternary")]))
        lines.append(f"| {size} | {fp['non_embedding_parameters'] / 1e6:.2f}M | {fp['tokens'] / 1e6:.2f}M | {lrs} | "
                     f"{cell(fp)} | {cell(tern)} | {tern['val_loss'] - fp['val_loss']:+.3f} |")
    seconds = sum(r["train_seconds"] for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} runs, {seconds / 60:.0f} minutes of training in all.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = best(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for network, style in (("fp", "o-"), ("ternary", "s-")):
        points = sorted((c["non_embedding_parameters"], c["val_loss"]) for (s, n), c in cells.items() if n == network)
        if points:
            ax.plot([p for p, _ in points], [v for _, v in points], style, label=network)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("ternary b1.58 vs full precision, best lr per cell")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/scaling_study")
    p.add_argument("--sizes", nargs="+", default=["xs", "s", "m"], choices=list(SIZES))
    p.add_argument("--lrs", nargs="+", type=float, default=[1.5e-3, 3e-3, 6e-3])
    p.add_argument("--tokens-per-param", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    p.add_argument("--force", action="store_true")
    p.add_argument("--analyze-only", action="store_true")
    args = p.parse_args()
    if not args.analyze_only:
        for size in args.sizes:
            for network in NETWORKS:
                for lr in args.lrs:
                    train(size, network, lr, args)
    rows = collect(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows, args)
    (out / "table.md").write_text(table + "\n")
    if rows:
        plot(rows, out / "scaling.png")
    print(table)


if __name__ == "__main__":
    main()
