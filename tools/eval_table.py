"""A results table of several models on the same lm-eval tasks (and perplexity), one evaluator call each.

    python tools/eval_table.py default=outputs/pretrain/x a48=outputs/a48_study/a48 \
        --tasks austen_cloze,austen_novel --out outputs/eval_table
    python tools/eval_table.py --analyze-only --out outputs/eval_table    # the table from finished reports

Each LABEL=SOURCE is scored by `python -m bitnet_train.evaluate SOURCE --tasks ... --out OUT/LABEL.json`
(the same evaluator users run; any source kind); a finished report is kept unless --force. The markdown
table (one row per model, one column per task metric) is printed and written to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def score(label: str, source: str, args: argparse.Namespace) -> dict:
    from bitnet_train.evaluate.__main__ import evaluate, parse_args

    out = Path(args.out) / f"{label}.json"
    if out.is_file() and not args.force:
        return json.loads(out.read_text())
    argv = [source, "--tasks", args.tasks, "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.num_fewshot is not None:
        argv += ["--num-fewshot", str(args.num_fewshot)]
    started = time.perf_counter()
    report = evaluate(parse_args(argv))
    report["seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[{label}] {source}: {report['tasks']} ({report['seconds']:.0f} s)", flush=True)
    return report


def markdown(reports: dict[str, dict]) -> str:
    columns: list[tuple[str, str]] = []
    for report in reports.values():
        for task, metrics in report["tasks"].items():
            columns += [(task, m) for m in metrics if (task, m) not in columns]
    lines = ["| model | " + " | ".join(f"{t} {m}" for t, m in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, report in reports.items():
        cells = [report["tasks"].get(t, {}).get(m) for t, m in columns]
        lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.3f}" if v < 100 else f"{v:.0f}"
                                                   for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="LABEL=SOURCE (checkpoint, run or stage folder, export)")
    p.add_argument("--tasks", default="austen_cloze,austen_novel")
    p.add_argument("--limit", type=float)
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default="outputs/eval_table")
    p.add_argument("--force", action="store_true")
    p.add_argument("--analyze-only", action="store_true")
    args = p.parse_args()
    reports: dict[str, dict] = {}
    if args.analyze_only:
        for f in sorted(Path(args.out).glob("*.json")):
            reports[f.stem] = json.loads(f.read_text())
    for spec in args.models:
        label, sep, source = spec.partition("=")
        if not sep or not label or not source:
            raise SystemExit(f"error: {spec!r} is not LABEL=SOURCE")
        reports[label] = score(label, source, args)
    table = markdown(reports)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
