"""BitDistill in the paper's own setting at CPU scale: a text-classification task, a full-precision teacher
fine-tuned on it, and ternary students, laid out like the paper's main and ablation tables.

    python tools/bitdistill_study.py                       # every run below, then the tables
    python tools/bitdistill_study.py --analyze-only        # the tables from finished runs
    python tools/bitdistill_study.py --students --base-runs bitnet_sft_base bitdistill_base fp_sft_base
                                                           # only the paper's setting (and the teacher it needs)

The task: which of the six Austen novels a passage comes from (the evaluator's `austen_novel`: 300
balanced test passages from the last 20% of each novel). Everything trained here sees only the first
80% of each novel, cut before the first held-out passage: the language-model corpus (--out/data/corpus/,
one file per novel) and the task's training records (--out/data/task_train.jsonl, --per-novel passages
of 40-120 words per novel, in the evaluator's prompt layout, answer " <title>"). Held-out perplexity is
taken on the first 150 paragraphs of each novel's last 20% (--out/data/heldout.txt).

Runs, each `python -m bitnet_train ...` in its own folder under --out:
  teacher_pretrain  the default tiny decoder in full precision (quant=fp: a plain Llama), --teacher-steps
                    on the corpus;
  teacher           it fine-tuned on the task (prompt/answer layout, loss on the answer), --teacher-task-steps;
                    exported to transformers (--out/teacher_hf) for the students' distillation;
  fp_sft            the full-precision control: the teacher fine-tuned --task-steps more, as the students are;
  bitnet_sft        the paper's BitNet-SFT baseline: the teacher's weights quantized to b1.58 (same
                    network, no extra norms) and fine-tuned on the task the same way (run with the students:
                    not with an empty --students);
  bitdistill        +experiment=distill_tiny from teacher_hf: stage 1 SubLN (gains calibrated), stage 2
                    continual pre-training on the corpus (--stage2-steps), stage 3 logit + attention-
                    relation distillation on the task (--task-steps; relations of the last layer);
  bitdistill_ones   the same with the new norms' gains at 1 (distill.norm_init=ones, the paper's start) instead
                    of calibrated: with both, held-out perplexity after each of the three stages;
  no_relation, no_stage2, no_subln   the ablations: gamma = 0; stage 2 skipped; no SubLN.
The paper's own setting (--base-runs): every row starts from the pretrained base (teacher_pretrain), not from
the fine-tuned teacher, and the teacher is the best full-precision fine-tune (fp_sft, exported to fp_sft_hf):
  fp_sft_base       FP16-SFT at the students' step count: the base fine-tuned --task-steps in full precision;
  bitnet_sft_base   BitNet-SFT: the base quantized to b1.58 and fine-tuned --task-steps;
  bitdistill_base   BitDistill with distill.student_init = the base (exported to base_hf), teacher fp_sft_hf;
  no_relation_base  the same without the relation loss.
Every task stage uses the same learning rate (--task-lr); the students' task stages the same steps (--task-steps). Accuracy is the evaluator's
(`python -m bitnet_train.evaluate RUN --tasks austen_novel --text heldout.txt`), zero-shot, on all 300
test passages. Results: docs/RESULTS.md#bitdistill-on-a-classification-task-the-papers-setting-cpu-scale.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from _study_runs import run_training

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_eval_tasks import HELD_OUT, NOVELS, paragraphs  # noqa: E402

PROMPT = "Passage: {passage}\nWhich Jane Austen novel is this passage from?\nAnswer:"
SHAPE = ["data.seq_len=256", "data.batch_size=8"]
STUDENTS = {  # in the order they run: the main row, its norm initialization, then the ablations
    "bitdistill": [],
    "bitdistill_ones": ["distill.norm_init=ones"],
    "no_relation": ["distill.stage3.attention_weight=0"],
    "no_stage2": ["distill.stage2.tokens=0"],
    "no_subln": ["distill.norms=none"],
}
BASE_RUNS = ("fp_sft_base", "bitnet_sft_base", "bitdistill_base", "no_relation_base")
STAGED = ("bitdistill", "bitdistill_ones", "bitdistill_base")  # held-out perplexity after each stage: new norms calibrated vs at 1
STAGE_DIRS = {1: "stage1_refine", 2: "stage2_continual"}  # stage 3's is the run's own report
LABELS = {"teacher_pretrain": "full-precision teacher, before fine-tuning", "teacher": "full-precision teacher (fine-tuned)",
          "bitnet_sft": "BitNet-SFT (b1.58)", "fp_sft": "full precision, the teacher fine-tuned as long again as the students", "bitdistill": "BitDistill (b1.58)",
          "bitdistill_ones": "BitDistill, new norms at 1 (not calibrated)", "no_stage2": "BitDistill w/o stage 2", "no_relation": "BitDistill w/o relation loss (gamma 0)",
          "no_subln": "BitDistill w/o SubLN",
          "fp_sft_base": "FP16-SFT from the base (full precision, the students' steps)",
          "bitnet_sft_base": "BitNet-SFT from the base (b1.58)",
          "bitdistill_base": "BitDistill from the base (b1.58; teacher: fp_sft)",
          "no_relation_base": "BitDistill from the base w/o relation loss (gamma 0)"}


def make_data(out: Path, per_novel: int) -> dict[str, Path]:
    """Corpus (first 80% of each novel), task training records and held-out text; see the module docstring."""
    data = out / "data"
    corpus = data / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    train, heldout = [], []
    for label, novel in enumerate(NOVELS):
        paras = paragraphs(novel)
        eligible = [i for i, p in enumerate(paras) if 40 <= len(p.split()) <= 120]
        first_held = eligible[int(len(eligible) * (1 - HELD_OUT))]  # the evaluator's test passages start here
        (corpus / f"{novel}.txt").write_text("\n\n".join(paras[:first_held]) + "\n", encoding="utf-8")
        heldout += paras[first_held:first_held + 150]
        pool = [paras[i] for i in eligible if i < first_held]
        for passage in random.Random(f"bitdistill-{novel}").sample(pool, min(per_novel, len(pool))):
            train.append({"prompt": PROMPT.format(passage=passage), "answer": " " + list(NOVELS.values())[label]})
    random.Random("bitdistill-shuffle").shuffle(train)
    task = data / "task_train.jsonl"
    task.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train), encoding="utf-8")
    text = data / "heldout.txt"
    text.write_text("\n\n".join(heldout) + "\n", encoding="utf-8")
    return {"corpus": corpus, "task": task, "heldout": text}


def steps_overrides(steps: int, *, warmup_div: int = 10, val_every: int | None = None) -> list[str]:
    return [f"trainer.max_steps={steps}", f"trainer.val_check_interval={val_every or steps}",
            f"callbacks.checkpoint.every_n_train_steps={steps}", f"optim.warmup_steps={max(1, steps // warmup_div)}"]


def task_data(paths: dict[str, Path]) -> list[str]:
    return ["data.layout=prompt_answer", f"data.files={paths['task']}"]


def export_hf(out: Path, run: str, name: str) -> Path:
    """A full-precision run's last checkpoint as a transformers folder (a teacher, or a student's start)."""
    folder = out / name
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "bitnet_train.export", str(out / run / "checkpoints" / "last.ckpt"),
                        "--format", "hf", "--out", str(folder)], check=True)
    return folder


def train_all(args: argparse.Namespace, paths: dict[str, Path]) -> None:
    out = Path(args.out)
    run = lambda name, overrides: run_training(out / name, [*SHAPE, *overrides, f"seed={args.seed}"],  # noqa: E731
                                               threads=args.threads, force=args.force)
    run("teacher_pretrain", ["quant=fp", f"data.files={paths['corpus']}", f"optim.lr={args.pretrain_lr}",
                             *steps_overrides(args.teacher_steps)])
    # the teacher's validation every 200 steps is its learning curve on held-in records
    run("teacher", ["quant=fp", f"init_from={out / 'teacher_pretrain' / 'checkpoints' / 'last.ckpt'}",
                    *task_data(paths), f"optim.lr={args.task_lr}",
                    *steps_overrides(args.teacher_task_steps, warmup_div=20, val_every=200)])
    task = [*task_data(paths), f"optim.lr={args.task_lr}", *steps_overrides(args.task_steps, warmup_div=20)]
    # the full-precision control: the teacher trained on as the students are (FP16-SFT at their step count);
    # the teacher of the paper's-setting rows
    run("fp_sft", ["quant=fp", f"init_from={out / 'teacher' / 'checkpoints' / 'last.ckpt'}", *task])
    if args.students:  # the rows from the fine-tuned teacher's weights: BitNet-SFT and the distilled students
        teacher_hf = export_hf(out, "teacher", "teacher_hf")
        run("bitnet_sft", ["quant.norm=none", f"init_from={out / 'teacher' / 'checkpoints' / 'last.ckpt'}", *task])
    # stage optimizers: distill_tiny's (AdamW, cosine, weight decay 0.01) at --task-lr
    distill = ["+experiment=distill_tiny", "data.tokenizer=null",
               f"distill.stage2.tokens={args.stage2_steps * 8 * 256}", f"distill.stage2.data.files={paths['corpus']}",
               f"distill.stage2.optim.lr={args.task_lr}",
               f"distill.stage3.steps={args.task_steps}", f"distill.stage3.data.files={paths['task']}",
               "distill.stage3.warmup_fraction=0.05",
               "distill.stage3.data.layout=prompt_answer", f"distill.stage3.optim.lr={args.task_lr}",
               "distill.stage3.attention.layers=[-1]", "distill.stage3.attention.padding_mask=true",
               f"trainer.val_check_interval={args.task_steps}",
               f"callbacks.checkpoint.every_n_train_steps={args.task_steps}"]
    for name in args.students:
        run(name, [*distill, f"distill.teacher={teacher_hf}", *STUDENTS[name]])
    if not args.base_runs:
        return
    base = out / "teacher_pretrain" / "checkpoints" / "last.ckpt"
    base_runs = {
        "fp_sft_base": lambda: run("fp_sft_base", ["quant=fp", f"init_from={base}", *task]),
        "bitnet_sft_base": lambda: run("bitnet_sft_base", ["quant.norm=none", f"init_from={base}", *task]),
    }
    from_base = [*distill, f"distill.teacher={export_hf(out, 'fp_sft', 'fp_sft_hf')}",
                 f"distill.student_init={export_hf(out, 'teacher_pretrain', 'base_hf')}"]
    base_runs["bitdistill_base"] = lambda: run("bitdistill_base", from_base)
    base_runs["no_relation_base"] = lambda: run("no_relation_base", [*from_base, *STUDENTS["no_relation"]])
    for name in args.base_runs:
        base_runs[name]()


def evaluate_all(args: argparse.Namespace, paths: dict[str, Path]) -> dict[str, dict]:
    from bitnet_train.evaluate.__main__ import evaluate, parse_args

    out = Path(args.out)
    reports = {}
    for name in ["teacher_pretrain", "teacher", "fp_sft", "bitnet_sft", *args.students, *args.base_runs]:
        path = out / "eval" / f"{name}.json"
        if not (out / name / "metrics.json").is_file():
            continue
        if not path.is_file() or args.force:
            started = time.perf_counter()
            report = evaluate(parse_args([str(out / name), "--tasks", "austen_novel", "--text", str(paths["heldout"]),
                                          "--batch-size", "8"]))
            report["seconds"] = time.perf_counter() - started
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n")
        reports[name] = json.loads(path.read_text())
    return reports


def stage_perplexities(args: argparse.Namespace, paths: dict[str, Path],
                       reports: dict[str, dict]) -> dict[str, dict[int, float]]:
    """Held-out perplexity of each stage's checkpoint of the STAGED runs among `reports` (the rows asked for;
    stage 3's is the run's own report)."""
    from bitnet_train.evaluate.__main__ import evaluate, parse_args

    out = Path(args.out)
    found = {}
    for name in STAGED:
        if name not in reports:
            continue
        found[name] = {}
        for stage, folder in STAGE_DIRS.items():
            path = out / "eval" / f"{name}_stage{stage}.json"
            if not path.is_file() or args.force:
                report = evaluate(parse_args([str(out / name / folder), "--text", str(paths["heldout"]),
                                              "--batch-size", "8"]))
                path.write_text(json.dumps(report, indent=2) + "\n")
            found[name][stage] = json.loads(path.read_text())["perplexity"]["perplexity"]
    return found


def stage_table(perplexities: dict[str, dict[int, float]], reports: dict[str, dict]) -> str:
    lines = ["| run | new norms' gains | after stage 1 | after stage 2 | after stage 3 | accuracy after stage 3 |",
             "|---|---|---|---|---|---|"]
    for name, ppl in perplexities.items():
        init = "at 1 (`norm_init=ones`)" if name == "bitdistill_ones" else "calibrated (`norm_init=calibrated`)"
        final = reports[name]
        lines.append(f"| {name} | {init} | {ppl[1]:.1f} | {ppl[2]:.1f} | {final['perplexity']['perplexity']:.1f} | "
                     f"{final['tasks']['austen_novel']['acc']:.3f} |")
    return "\n".join(lines)


def train_seconds(run: Path) -> float:
    """Training time of a run: its metrics.json, summed over stages for a distillation run."""
    m = json.loads((run / "metrics.json").read_text())
    if "train_seconds" in m:
        return float(m["train_seconds"])
    return sum(float(s.get("train_seconds", 0.0)) for s in m.values() if isinstance(s, dict))


def table(args: argparse.Namespace, reports: dict[str, dict]) -> str:
    out = Path(args.out)
    lines = ["| model | accuracy (300 test passages) | acc_norm | held-out perplexity | training time |",
             "|---|---|---|---|---|"]
    for name, report in reports.items():
        acc = report["tasks"]["austen_novel"]
        ppl = report["perplexity"]["perplexity"]
        lines.append(f"| {LABELS[name]} | {acc['acc']:.3f} | {acc['acc_norm']:.3f} | {ppl:.1f} | "
                     f"{train_seconds(out / name) / 60:.1f} min |")
    for teacher_run, sft_run, bd_run in (("teacher", "bitnet_sft", "bitdistill"),
                                         ("fp_sft", "bitnet_sft_base", "bitdistill_base")):
        teacher, sft, bd = (reports.get(k, {}).get("tasks", {}).get("austen_novel", {}).get("acc")
                            for k in (teacher_run, sft_run, bd_run))
        if None in (teacher, sft, bd):
            continue
        if teacher > sft:
            lines += ["", f"Share of the {sft_run} -> {teacher_run} (teacher) accuracy gap that {bd_run} closes: "
                          f"{(bd - sft) / (teacher - sft):+.0%} (goal: at least +50%)."]
        else:
            lines += ["", f"No gap to close: {sft_run} ({sft:.3f}) is not below the teacher {teacher_run} "
                          f"({teacher:.3f}); {bd_run} is {bd - sft:+.3f} from {sft_run}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/bitdistill_study")
    p.add_argument("--per-novel", type=int, default=300, help="task training passages per novel")
    p.add_argument("--teacher-steps", type=int, default=500, help="teacher pre-training steps (8 x 256 tokens)")
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--teacher-task-steps", type=int, default=1200,
                   help="the teacher's fine-tuning steps (batch 8; at 300 it had learnt only the answers' prior)")
    p.add_argument("--task-steps", type=int, default=600, help="steps of every student's task stage (batch 8)")
    p.add_argument("--task-lr", type=float, default=2e-3)
    p.add_argument("--stage2-steps", type=int, default=150, help="BitDistill stage 2 steps (8 x 256 tokens)")
    p.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS),
                   help="the rows distilled from the fine-tuned teacher (none: --students)")
    p.add_argument("--base-runs", nargs="*", default=list(BASE_RUNS), choices=list(BASE_RUNS),
                   help="the paper's setting: rows from the pretrained base, teacher fp_sft (none: --base-runs)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.add_argument("--analyze-only", action="store_true")
    args = p.parse_args()
    paths = make_data(Path(args.out), args.per_novel)
    if not args.analyze_only:
        train_all(args, paths)
    reports = evaluate_all(args, paths)
    text = table(args, reports) + "\n\nHeld-out perplexity after each stage:\n\n" + stage_table(
        stage_perplexities(args, paths, reports), reports)
    (Path(args.out) / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
