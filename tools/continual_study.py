"""A small continual-QAT study on the shipped corpus: when and how to switch from 16-bit to 1.58-bit.

    python tools/continual_study.py                       # all runs, then table + plot
    python tools/continual_study.py --analyze-only        # table + plot from the finished runs
    python tools/continual_study.py --only fp16_plain     # an extra run; the table covers every finished run

Runs (same model, data order, seed and token budget; only the quantization timeline differs):

  fp16              16-bit throughout: the same network (sub-norms included) with lambda 0, the
                    reference the continual runs coincide with until their switch
  b158_from_start   1.58-bit QAT from step 0
  abrupt_retain     16-bit, then an abrupt switch at --at of the run, Adam state retained
  abrupt_reset      the same switch, Adam state reset (moments and step counters zeroed)
  linear_retain     16-bit, then lambda phased in linearly over --ramp steps, state retained
  fp16_plain        (only with --only fp16_plain) 16-bit without the extra sub-norms: the cost of
                    the BitNet sub-norm architecture itself at this scale

Each run is `python -m bitnet_train` in its own process (outputs under --out/NAME). Afterwards the
spike detector (bitnet_train/monitor/spikes.py) reads each run's logs/monitor.jsonl; the table
gives the final validation perplexity (metrics.json), the largest flagged loss spike (height over
the pre-spike baseline, its step) and the steps until 90% of it was gone again. All runs see the
same batches in the same order, and a continual run computes exactly what fp16 computes until its
switch, so the cost of quantizing is also measured without data noise and without a threshold, as
the loss gap to fp16 on the same batches: at the switch step, averaged over the 100 steps from it,
and averaged over the last 100 steps. The overlay plot shows loss (and the switch up close),
gradient norm and lambda. This tests, at a toy scale, the two findings of Nielsen et al.
(arXiv 2502.11895): 16-to-1.58-bit beats 1.58-bit from the start, and a phase-in and a retained
optimizer state shrink the spike at the switch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bitnet_train.monitor.history import load_history
from bitnet_train.monitor.plot import plot_runs
from bitnet_train.monitor.report import largest, spike_rows
from bitnet_train.monitor.spikes import SpikeSettings

# A model and batch that train a step in about a quarter of a second on one busy CPU core.
# relu^2 FFN, unit sub-norm gains and lr 1.5e-3: the settings the study was made with, pinned since the
# tiny defaults changed (docs/RESULTS.md).
SHAPE = ["model.hidden_size=128", "model.intermediate_size=344", "model.num_hidden_layers=4",
         "model.num_attention_heads=4", "model.hidden_act=relu2", "data.seq_len=128", "data.batch_size=8",
         "data.max_val_blocks=64", "quant.norm_gain_init=1.0", "optim.lr=1.5e-3"]


EXTRA = {"fp16_plain": ["quant=fp"]}
"""Runs trained only when named with --only."""


def runs(at: float, ramp: int) -> dict[str, list[str]]:
    switch = [f"schedule.at={at}"]
    return {
        "fp16": ["quant.weight_lambda=0", "quant.activation_lambda=0"],
        "b158_from_start": [],
        "abrupt_retain": [*switch, "schedule.optimizer=retain"],
        "abrupt_reset": [*switch, "schedule.optimizer=reset"],
        "linear_retain": [*switch, "schedule.optimizer=retain", "schedule.weight.shape=linear",
                          f"schedule.weight.length={ramp}", "schedule.activation.shape=linear",
                          f"schedule.activation.length={ramp}"],
    }


def train(name: str, overrides: list[str], args: argparse.Namespace) -> None:
    out = Path(args.out) / name
    if (out / "metrics.json").is_file() and not args.force:
        print(f"[{name}] done already ({out}); --force to rerun", flush=True)
        return
    cmd = [sys.executable, "-m", "bitnet_train", *SHAPE, f"trainer.max_steps={args.steps}",
           f"trainer.val_check_interval={args.steps}", f"callbacks.checkpoint.every_n_train_steps={args.steps}",
           "callbacks.progress=null", "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           "trainer.log_every_n_steps=10",
           f"seed={args.seed}", f"hydra.run.dir={out}", f"task_name={name}", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    print(f"[{name}] {' '.join(cmd[3:])}", flush=True)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] failed (exit {proc.returncode}); see {out / 'train.log'}")
    print(f"[{name}] finished in {time.perf_counter() - started:.0f} s", flush=True)


def mean_gap(losses: list[float], reference: list[float], first: int, last: int) -> float:
    """Mean of losses - reference over steps [first, last) (the same batches in both runs)."""
    return statistics.fmean(a - b for a, b in zip(losses[first:last], reference[first:last]))


def analyze(names: list[str], args: argparse.Namespace) -> list[dict]:
    settings = SpikeSettings()
    rows, histories, spikes = [], [], {}
    reference = None
    if "fp16" in names:
        reference = load_history(Path(args.out) / "fp16", name="fp16").series("train/loss")[1]
    for name in names:
        out = Path(args.out) / name
        metrics = json.loads((out / "metrics.json").read_text())
        history = load_history(out, name=name)
        found = spike_rows(history, settings)
        top = largest(found)
        switch = history.transitions[0][0] if history.transitions else int(round(args.at * args.steps))
        losses = history.series("train/loss")[1]
        gaps = {}
        if reference is not None:
            gaps = {"gap_at_switch": losses[switch] - reference[switch],
                    "gap_after_switch": mean_gap(losses, reference, switch, switch + 100),
                    "gap_last_100": mean_gap(losses, reference, len(losses) - 100, len(losses))}
        histories.append(history)
        spikes[name] = found
        rows.append({"run": name, "val_ppl": metrics["val_perplexity"], "tokens": metrics["tokens_seen"],
                     "spikes": len(found), "largest_spike_height": top.height if top else 0.0,
                     "largest_spike_step": top.step if top else None,
                     "recovery_steps": top.recovery_steps if top else None,
                     "transition": history.transitions[0][0] if history.transitions else None, **gaps})
    switch = int(round(args.at * args.steps))
    shown = [h for h in histories if h.name not in EXTRA]  # extras are in the table; the plot shows the switch
    zoom = (max(switch - 40, 0), min(switch + 160, args.steps))
    plot_runs(shown or histories, spikes, args.plot, smoothing=0.1, zoom=zoom,
              title=f"continual 16 -> 1.58-bit, {args.steps} steps, switch at {args.at} (dashed), spikes (v)")
    return rows


def markdown(rows: list[dict]) -> str:
    gaps = all("gap_at_switch" in r for r in rows)
    head = "| run | switch at | final val ppl | flagged spikes | largest spike height (nats) | at step | recovery steps |"
    rule = "|---|---|---|---|---|---|---|"
    if gaps:
        head += " gap to fp16 at switch step | mean gap, 100 steps from switch | mean gap, last 100 steps |"
        rule += "---|---|---|"
    lines = [head, rule]
    for r in rows:
        rec = r["recovery_steps"]
        rec = "-" if r["largest_spike_step"] is None else ("not recovered" if rec is None else str(rec))
        line = (f"| {r['run']} | {r['transition'] if r['transition'] is not None else '-'} | {r['val_ppl']:.2f} | "
                f"{r['spikes']} | {r['largest_spike_height']:.3f} | "
                f"{r['largest_spike_step'] if r['largest_spike_step'] is not None else '-'} | {rec} |")
        if gaps:
            line += f" {r['gap_at_switch']:+.3f} | {r['gap_after_switch']:+.3f} | {r['gap_last_100']:+.3f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/continual_study", help="run folders go here")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of every run (same token budget)")
    parser.add_argument("--at", type=float, default=0.5, help="switch point, fraction of the run")
    parser.add_argument("--ramp", type=int, default=100, help="linear phase-in length in steps")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--only", action="append", help="run only these (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--analyze-only", action="store_true", help="skip training, analyze finished runs")
    parser.add_argument("--plot", default="docs/continual_study.png", help="overlay plot PNG")
    args = parser.parse_args(argv)
    plan = {**runs(args.at, args.ramp), **EXTRA}
    names = args.only or list(runs(args.at, args.ramp))
    unknown = [n for n in names if n not in plan]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}; choose from {', '.join(plan)}")
    if not args.analyze_only:
        for name in names:
            train(name, plan[name], args)
    finished = [n for n in plan if (Path(args.out) / n / "metrics.json").is_file()]
    if not finished:
        parser.error(f"no finished runs under {args.out}")
    rows = analyze(finished, args)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    fp = next((r for r in rows if r["run"] == "fp16"), None)
    if fp is not None and all(math.isfinite(r["val_ppl"]) for r in rows):
        print("\n" + ", ".join(f"{r['run']} {r['val_ppl'] / fp['val_ppl']:.3f}x" for r in rows) + " of fp16's perplexity")
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
