"""Regenerate the offline evaluation tasks' data from the shipped Austen corpus, deterministically.

Writes bitnet_train/evaluate/tasks/austen_cloze/austen_cloze.jsonl and
bitnet_train/evaluate/tasks/austen_novel/{train,test}.jsonl (see docs/EVALUATION.md for what they hold):

    python tools/make_eval_tasks.py            # rewrite the files
    python tools/make_eval_tasks.py --check    # exit 1 when the shipped files differ from a fresh build
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "austen"
TASKS = REPO / "bitnet_train" / "evaluate" / "tasks"
NOVELS = {"emma": "Emma", "mansfieldpark": "Mansfield Park", "northangerabbey": "Northanger Abbey",
          "persuasion": "Persuasion", "prideprejudice": "Pride and Prejudice",
          "sensesensibility": "Sense and Sensibility"}
CLOZE_PER_NOVEL = 50
NOVEL_TEST_PER_NOVEL = 50
NOVEL_TRAIN_PER_NOVEL = 10
HELD_OUT = 0.2  # the multiple-choice test passages come from the last 20% of each novel, few-shot ones from the rest


def paragraphs(novel: str) -> list[str]:
    text = gzip.open(CORPUS / f"{novel}.txt.gz", "rt", encoding="utf-8").read()
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if p and not p.isupper() and not p.startswith("CHAPTER")]


def cloze_rows() -> list[dict]:
    rows = []
    for novel in NOVELS:
        candidates = []
        for para in paragraphs(novel):
            words = para.rstrip(" .,;:!?\"'_-").split(" ")
            if 30 <= len(words) <= 120 and re.fullmatch(r"[A-Za-z]{3,}", words[-1]):
                candidates.append(" ".join(words))
        for text in random.Random(f"cloze-{novel}").sample(candidates, CLOZE_PER_NOVEL):
            rows.append({"text": text, "novel": NOVELS[novel]})
    return rows


def novel_rows() -> tuple[list[dict], list[dict]]:
    train, test = [], []
    for label, novel in enumerate(NOVELS):
        paras = [p for p in paragraphs(novel) if 40 <= len(p.split()) <= 120]
        cut = int(len(paras) * (1 - HELD_OUT))
        rng = random.Random(f"novel-{novel}")
        train += [{"passage": p, "label": label} for p in rng.sample(paras[:cut], NOVEL_TRAIN_PER_NOVEL)]
        test += [{"passage": p, "label": label} for p in rng.sample(paras[cut:], NOVEL_TEST_PER_NOVEL)]
    random.Random("shuffle-train").shuffle(train)
    random.Random("shuffle-test").shuffle(test)
    return train, test


def files() -> dict[Path, str]:
    train, test = novel_rows()
    dump = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    return {TASKS / "austen_cloze" / "austen_cloze.jsonl": dump(cloze_rows()),
            TASKS / "austen_novel" / "train.jsonl": dump(train),
            TASKS / "austen_novel" / "test.jsonl": dump(test)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args()
    stale = []
    for path, text in files().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.relative_to(REPO))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)} ({text.count(chr(10))} rows)")
    if stale:
        print("stale: " + ", ".join(map(str, stale)) + "; run python tools/make_eval_tasks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
