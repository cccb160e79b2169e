"""Why the sub-norm (SubLN) network trained worse at small scale: controlled runs of the default tiny model.

    python tools/norm_study.py                         # every run below, one after another, then the table
    python tools/norm_study.py --runs b158_subln b158_none --steps 1200 --out outputs/norm_study_1200
    python tools/norm_study.py --analyze-only          # the table from finished runs

Every run is `python -m bitnet_train` with the same seed, data order, model shape and steps (default
300 steps of 8 x 256 tokens, the issue's setting); a run differs from its reference in the overrides
listed in RUNS only. "fp" runs keep the network of their b1.58 twin (the same BitLinear modules and
norms) at quantization strength 0 (quant.weight_lambda=0, quant.activation_lambda=0), or use plain
nn.Linear (quant=fp) for the network without norms. The table gives the validation perplexity
(metrics.json), the mean training loss over steps 1-50 and 251-300 (logs/metrics.csv: a slow start
against a worse end) and the wall time. Results also go to --out/results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from _study_runs import run_training

FP_SAME_NET = ["quant.weight_lambda=0", "quant.activation_lambda=0"]
UNIT = ["quant.norm_gain_init=1.0"]  # the sub-norms' gains as RMSNorm starts them (the default before this study)
RUNS: dict[str, list[str]] = {
    # the table (sub-norm networks with unit gains)
    "fp_none": ["quant=fp"],
    "fp_subln": [*FP_SAME_NET, *UNIT],
    "b158_none": ["quant.norm=none"],
    "b158_subln": [*UNIT],
    # learning rate (1.5e-3 is the default)
    "b158_subln_lr7.5e-4": [*UNIT, "optim.lr=7.5e-4"],
    "b158_subln_lr3e-3": [*UNIT, "optim.lr=3e-3"],
    "b158_subln_lr6e-3": [*UNIT, "optim.lr=6e-3"],
    "b158_none_lr3e-3": ["quant.norm=none", "optim.lr=3e-3"],
    "b158_none_lr6e-3": ["quant.norm=none", "optim.lr=6e-3"],
    "fp_none_lr7.5e-4": ["quant=fp", "optim.lr=7.5e-4"],
    "fp_none_lr3e-3": ["quant=fp", "optim.lr=3e-3"],
    "fp_subln_lr7.5e-4": [*FP_SAME_NET, *UNIT, "optim.lr=7.5e-4"],
    # initialization of the blocks' output projections
    "b158_subln_depthinit": [*UNIT, "model.depth_scaled_init=true"],
    "fp_subln_depthinit": [*FP_SAME_NET, *UNIT, "model.depth_scaled_init=true"],
    "b158_none_depthinit": ["quant.norm=none", "model.depth_scaled_init=true"],
    # the sub-norms' initial gain: 1 makes the normed branches start far larger than without the norms;
    # 0.05 is the default since this study (with lr 3e-3: b158_subln_gain0.05_lr3e-3 is the default run)
    "b158_subln_gain0.2": ["quant.norm_gain_init=0.2"],
    "b158_subln_gain0.05": ["quant.norm_gain_init=0.05"],
    "b158_subln_gain0.02": ["quant.norm_gain_init=0.02"],
    "fp_subln_gain0.05": [*FP_SAME_NET, "quant.norm_gain_init=0.05"],
    "b158_subln_gain0.05_lr3e-3": ["quant.norm_gain_init=0.05", "optim.lr=3e-3"],
    "b158_subln_gain0.05_lr7.5e-4": ["quant.norm_gain_init=0.05", "optim.lr=7.5e-4"],
    "b158_subln_gain0.05_lr6e-3": ["quant.norm_gain_init=0.05", "optim.lr=6e-3"],
    "fp_subln_gain0.05_lr3e-3": [*FP_SAME_NET, "quant.norm_gain_init=0.05", "optim.lr=3e-3"],
    # the FFN activation: the earlier default relu^2 (688 wide, the same parameter count) against SiLU 768
    "b158_subln_relu2": [*UNIT, "model.hidden_act=relu2", "model.intermediate_size=688"],
    "b158_none_relu2": ["quant.norm=none", "model.hidden_act=relu2", "model.intermediate_size=688"],
}


OLD_LR = "optim.lr=1.5e-3"
"""The peak rate before this study (the default is now 3e-3): every run that names no rate uses it."""


def overrides(name: str) -> list[str]:
    runs = RUNS[name]
    return runs if any(o.startswith("optim.lr=") for o in runs) else [*runs, OLD_LR]


def run(name: str, args: argparse.Namespace) -> None:
    steps = args.steps
    run_training(Path(args.out) / name, [*overrides(name), *args.extra, f"trainer.max_steps={steps}",
                                         f"trainer.val_check_interval={steps}",
                                         f"callbacks.checkpoint.every_n_train_steps={steps}",
                                         "trainer.log_every_n_steps=1", f"seed={args.seed}"],
                 threads=args.threads, force=args.force)


def _train_losses(out: Path) -> list[float]:
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    by_step: dict[int, float] = {}
    for row in rows:
        if row.get("train/loss"):
            by_step[int(row["step"])] = float(row["train/loss"])
    return [by_step[k] for k in sorted(by_step)]


def analyze(names: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in names:
        out = Path(args.out) / name
        if not (out / "metrics.json").is_file():
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        losses = _train_losses(out)
        window = max(1, min(50, len(losses) // 6))
        rows.append({"run": name, "overrides": overrides(name), "val_ppl": metrics["val_perplexity"],
                     "val_loss": metrics["val_loss"], "train_first": sum(losses[:window]) / window,
                     "train_last": sum(losses[-window:]) / window, "seconds": metrics["train_seconds"],
                     "steps": metrics["steps"]})
    return rows


def init_scales() -> str:
    """RMS of o_proj / down_proj inputs (before their norm) and outputs at initialization, random tokens."""
    import torch

    from bitnet_train.config import ModelConfig, QuantConfig
    from bitnet_train.models.decoder import CausalLM
    from bitnet_train.quant.convert import bitlinear_modules, quantize_model

    lines = ["| network | o_proj input | o_proj output | down_proj input | down_proj output |", "|---|---|---|---|---|"]
    for norm, gain in (("none", 1.0), ("subln", 1.0), ("subln", 0.05)):
        torch.manual_seed(0)
        model = CausalLM(ModelConfig(vocab_size=4096))
        quantize_model(model, QuantConfig(norm=norm, norm_gain_init=gain))
        rms: dict[str, list[float]] = {}

        def record(leaf):
            def hook(module, inputs, output):
                rms.setdefault(f"{leaf} in", []).append(float(inputs[0].pow(2).mean().sqrt()))
                rms.setdefault(f"{leaf} out", []).append(float(output.pow(2).mean().sqrt()))
            return hook

        for name, module in bitlinear_modules(model).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("o_proj", "down_proj"):
                module.register_forward_hook(record(leaf))
        with torch.no_grad():
            model(torch.randint(3, 4096, (4, 256), generator=torch.Generator().manual_seed(0)))
        mean = {k: sum(v) / len(v) for k, v in rms.items()}
        lines.append(f"| {norm}, gains {gain:g} | " + " | ".join(
            f"{mean[k]:.4f}" for k in ("o_proj in", "o_proj out", "down_proj in", "down_proj out")) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = ["| run | overrides | val ppl | train loss, first 50 | train loss, last 50 | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | `{' '.join(r['overrides']) or '(default)'}` | {r['val_ppl']:.1f} | "
                     f"{r['train_first']:.3f} | {r['train_last']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/norm_study")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="OMP threads per run (runs go one after another)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    p.add_argument("--force", action="store_true")
    p.add_argument("--analyze-only", action="store_true")
    p.add_argument("--init-scales", action="store_true", help="print the branches' scales at initialization and stop")
    args = p.parse_args()
    if args.init_scales:
        print(init_scales())
        return
    if not args.analyze_only:
        for name in args.runs:
            run(name, args)
    rows = analyze(args.runs, args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
