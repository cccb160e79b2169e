"""Loaders of the offline Austen tasks: the JSON-lines files beside each task YAML, as a datasets.DatasetDict.

lm-eval calls them through `custom_dataset: !function ...` so that the files are found wherever the package
is installed (a relative `data_files` path would be resolved against the working directory).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
NOVELS = ["Emma", "Mansfield Park", "Northanger Abbey", "Persuasion", "Pride and Prejudice", "Sense and Sensibility"]
FILES = {"austen_cloze": {"test": HERE / "austen_cloze" / "austen_cloze.jsonl"},
         "austen_novel": {"train": HERE / "austen_novel" / "train.jsonl", "test": HERE / "austen_novel" / "test.jsonl"}}


def missing_files(task: str) -> list[Path]:
    return [p for p in FILES.get(task, {}).values() if not p.is_file()]


def _load(task: str):
    import datasets

    missing = missing_files(task)
    if missing:
        raise FileNotFoundError(f"task {task}: data file {missing[0]} is missing; run python tools/make_eval_tasks.py")
    return datasets.load_dataset("json", data_files={k: str(v) for k, v in FILES[task].items()})


def load_cloze(**_):
    return _load("austen_cloze")


def load_novel(**_):
    return _load("austen_novel")
