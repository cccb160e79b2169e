"""Find loss spikes in one or more runs, print them as a table and plot the runs overlaid.

    python tools/spikes.py outputs/pretrain/RUN                      # a run folder
    python tools/spikes.py RUN_A RUN_B --label abrupt --label linear --plot spikes.png
    python tools/spikes.py RUN/wandb/offline-run-...  --json         # a W&B run folder, online or offline

Each RUN is a run's output folder (its logs/monitor.jsonl is read first, then logs/metrics.csv,
then the newest W&B run under wandb/), a W&B run folder, or a .jsonl / .csv / .wandb file.
Spikes are found with the spike monitor's detector (bitnet_train/monitor/spikes.py): a robust
z-score of the training loss against a trailing window. The table lists, per spike: the onset
step, the peak loss, its height over the pre-spike baseline, the steps until 90% of the height is
gone again in the median of 5 post-peak steps ('-': not by the end of the run) and the mean
weight / activation lambda at the onset. Below the table, the run's fault handling from the JSONL:
spike mitigations (zclip, skip, rollback) and skipped non-finite steps, one line each.
"""

from __future__ import annotations

import argparse
import json
import sys

from bitnet_train.config import ConfigError
from bitnet_train.monitor.history import load_history
from bitnet_train.monitor.report import format_table, spike_rows
from bitnet_train.monitor.spikes import SpikeSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or .jsonl/.csv/.wandb histories")
    parser.add_argument("--label", action="append", default=[], help="name of each run in table and plot (in order)")
    parser.add_argument("--source", choices=["jsonl", "csv", "wandb"], help="read this kind of history only")
    parser.add_argument("--plot", metavar="PNG", help="write the overlay plot here")
    parser.add_argument("--title", help="plot title")
    parser.add_argument("--smoothing", type=float, default=0.1, help="EMA weight of each new step in the plot (1 = raw)")
    parser.add_argument("--zoom", type=int, nargs=2, metavar=("FIRST", "LAST"),
                        help="add a panel with the loss over these steps only")
    parser.add_argument("--json", action="store_true", help="print the spikes as JSON instead of a table")
    parser.add_argument("--window", type=int, default=50, help="trailing steps of the baseline (default 50)")
    parser.add_argument("--threshold", type=float, default=6.0, help="robust z-score that starts a spike (default 6)")
    parser.add_argument("--min-history", type=int, default=20, help="steps needed before flagging (default 20)")
    parser.add_argument("--recover-fraction", type=float, default=0.9,
                        help="share of the height that must be gone to count as recovered (default 0.9)")
    parser.add_argument("--recover-window", type=int, default=5,
                        help="post-peak steps whose median must be back down (default 5)")
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.runs):
        parser.error(f"{len(args.label)} --label given for {len(args.runs)} runs; give one per run or none")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = SpikeSettings(window=args.window, threshold=args.threshold, min_history=args.min_history,
                                 recover_fraction=args.recover_fraction, recover_window=args.recover_window)
        labels = args.label or [None] * len(args.runs)
        histories = [load_history(run, name=label, kind=args.source) for run, label in zip(args.runs, labels)]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = {h.name: spike_rows(h, settings) for h in histories}
    if args.json:
        out = [{"run": h.name, "source": h.source, "transitions": h.transitions,
                "spikes": [r.as_dict() for r in rows[h.name]], "actions": h.actions} for h in histories]
        print(json.dumps(out, indent=2))
    else:
        for h in histories:
            marks = ", ".join(f"{name} at {step}" for step, name in h.transitions) or "none"
            print(f"{h.name}: {len(h.series('train/loss')[0])} steps from {h.source}; transitions: {marks}")
        print(format_table([r for h in histories for r in rows[h.name]]))
        for h in histories:
            for action in h.actions:
                detail = ", ".join(f"{k}={v}" for k, v in action.items() if k not in ("event", "step"))
                print(f"{h.name}: step {action['step']}: {action['event']} {detail}")
    if args.plot:
        from bitnet_train.monitor.plot import plot_runs

        path = plot_runs(histories, rows, args.plot, smoothing=args.smoothing, title=args.title,
                         zoom=tuple(args.zoom) if args.zoom else None)
        print(f"plot: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
