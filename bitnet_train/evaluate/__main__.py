"""`python -m bitnet_train.evaluate SOURCE`: perplexity on text and lm-eval tasks, as one JSON report.

SOURCE: a run's checkpoint, a consolidated checkpoint, a run or distillation stage folder, a native export or
a transformers export folder (sources.py). Examples:
  python -m bitnet_train.evaluate runs/x/checkpoints/last.ckpt --tasks austen_cloze,austen_novel --limit 100
  python -m bitnet_train.evaluate export/hf --text 'data/austen/persuasion.txt.gz' --stride 128
  python -m bitnet_train.evaluate model.safetensors --tasks arc_easy,hellaswag --num-fewshot 0 \
      --output-path results/ --log-samples         # standard tasks need the network (the Hub) once
Bad input (unknown task or source kind, missing tokenizer or task data) stops with one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bitnet_train.config import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bitnet_train.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("source", help="checkpoint, run/stage folder, native .safetensors or transformers folder")
    p.add_argument("--config", help="run configuration for a checkpoint that carries none")
    p.add_argument("--tokenizer", help="tokenizer for a checkpoint whose run configuration names none")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-length", type=int, help="context length (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8)
    g = p.add_argument_group("lm-eval tasks")
    g.add_argument("--tasks", help="comma-separated lm-eval tasks, groups or tags (offline: austen_cloze, austen_novel)")
    g.add_argument("--num-fewshot", type=int)
    g.add_argument("--limit", type=float, help="examples per task (a fraction below 1)")
    g.add_argument("--output-path", help="lm-eval's results folder (and samples with --log-samples)")
    g.add_argument("--log-samples", action="store_true")
    g.add_argument("--include-path", help="a folder of extra task YAMLs")
    g.add_argument("--seed", type=int, default=1234)
    t = p.add_argument_group("perplexity")
    t.add_argument("--text", nargs="+", help="text files, folders or globs in the training data formats")
    t.add_argument("--dataset", help="a datasets dataset name or local folder")
    t.add_argument("--split", default="test")
    t.add_argument("--text-column", default="text")
    t.add_argument("--sample-by", default="paragraph", choices=["paragraph", "line", "document"])
    t.add_argument("--stride", type=int, help="targets per window (default: the window length, disjoint)")
    t.add_argument("--documents", type=int, help="score the first N documents only")
    p.add_argument("--out", help="also write the report to this JSON file")
    args = p.parse_args(argv)
    if not args.tasks and not args.text and not args.dataset:
        p.error("nothing to evaluate: give --tasks and/or --text / --dataset")
    return args


def evaluate(args: argparse.Namespace) -> dict:
    from bitnet_train.evaluate.sources import describe, load_evaluable, source_kind
    from bitnet_train.evaluate.task_names import check_tasks

    tasks = check_tasks([t for t in args.tasks.split(",") if t], args.include_path) if args.tasks else []
    source_kind(Path(args.source).expanduser())  # refuse an unknown kind before reading any text
    texts = None
    if args.text or args.dataset:
        from bitnet_train.evaluate.perplexity import read_texts

        texts = read_texts(args.text, args.dataset, args.split, args.text_column, args.sample_by, args.documents)
    ev = load_evaluable(args.source, args.config, args.tokenizer, args.device, args.max_length)
    report: dict = {"source": describe(ev)}
    if texts is not None:
        from bitnet_train.evaluate.perplexity import perplexity

        report["perplexity"] = perplexity(ev, texts, args.stride, args.max_length, args.batch_size)
    if tasks:
        from bitnet_train.evaluate.harness import run_tasks, summarize
        from bitnet_train.evaluate.lm import BitnetLM

        results = run_tasks(BitnetLM(evaluable=ev, batch_size=args.batch_size), tasks, args.num_fewshot,
                            args.limit, args.output_path, args.log_samples, args.include_path, args.seed)
        report["tasks"] = summarize(results)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = evaluate(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
