"""Task names for lm-eval: the harness's own tasks plus the offline Austen tasks shipped under tasks/.

`task_manager()` is lm-eval's TaskManager with our folder included; `check_tasks` refuses, before any model
is loaded, a name that is neither a task, a group nor a tag (naming the closest ones, difflib), and an
offline task whose data file is missing.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

from bitnet_train.config import ConfigError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
OFFLINE = {"austen_cloze": ("austen_cloze/austen_cloze.jsonl",),
           "austen_novel": ("austen_novel/train.jsonl", "austen_novel/test.jsonl")}


def missing_files(task: str) -> list[Path]:
    return [TASKS_DIR / f for f in OFFLINE.get(task, ()) if not (TASKS_DIR / f).is_file()]


@lru_cache(maxsize=4)
def task_manager(include_path: str | None = None):
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + ([include_path] if include_path else [])
    return TaskManager(verbosity="ERROR", include_path=paths)


def check_tasks(names: list[str], include_path: str | None = None) -> list[str]:
    if not names:
        raise ConfigError("no task given: pass --tasks NAME[,NAME...] (e.g. austen_cloze,austen_novel)")
    known = task_manager(include_path).all_tasks
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; close names: {', '.join(close)}" if close else "; list them with `lm_eval ls tasks`"
            raise ConfigError(f"unknown task {name!r}{hint}")
        missing = missing_files(name)
        if missing:
            raise ConfigError(f"task {name}: data file {missing[0]} is missing; regenerate it with "
                              "python tools/make_eval_tasks.py")
    return names
