"""Running lm-eval tasks on an Evaluable, and the `lm_eval` command line with our model class registered.

`run_tasks` calls lm-eval's simple_evaluate with our LM class and saves what `--output_path` /
`--log_samples` ask for through lm-eval's own EvaluationTracker (the files `lm_eval` writes).
`python -m bitnet_train.evaluate.harness ARGS` is exactly the `lm_eval` command with `--model bitnet_train`
available and the offline tasks on the include path: lm-eval 0.4.13 finds models only in its own
registry (no entry-point discovery), so a plain `lm_eval` process cannot see a class it never imports.

lm-eval bootstraps the stderr of some aggregates (perplexity, f1, ...) in a fork()ed multiprocessing pool
unless DISABLE_MULTIPROC is set. Forking a process whose torch thread pools are running can leave a child
blocked forever on a lock held by a thread that did not survive the fork, so both paths here set it and
lm-eval bootstraps in-process.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from bitnet_train.evaluate.task_names import TASKS_DIR, task_manager


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of lm-eval's results, the ',none' filter suffix dropped, stderr left out."""
    out = {}
    for task, metrics in results.get("results", {}).items():
        out[task] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and "stderr" not in k and k not in ("alias", "sample_len")}
    return out


def run_tasks(lm, tasks: list[str], num_fewshot: int | None = None, limit: float | None = None,
              output_path: str | None = None, log_samples: bool = False, include_path: str | None = None,
              seed: int = 1234, **kwargs) -> dict[str, Any]:
    """lm-eval's results dict for `tasks` on the LM instance `lm` (see module docstring)."""
    os.environ["DISABLE_MULTIPROC"] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=output_path) if output_path else None
    results = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, log_samples=log_samples,
                              evaluation_tracker=tracker, task_manager=task_manager(include_path),
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, **kwargs)
    if tracker is not None:
        samples = results.pop("samples", None) if log_samples else None
        tracker.save_results_aggregated(results=results, samples=samples)
        for task in (results["configs"] if samples else []):
            tracker.save_results_samples(task_name=task, samples=samples[task])
        if samples is not None:
            results["samples"] = samples
    return results


def main(argv: list[str] | None = None) -> None:
    """`lm_eval` itself, with our model class registered and our task folder included."""
    import bitnet_train.evaluate.lm  # noqa: F401  (registers "bitnet_train")
    from lm_eval.__main__ import cli_evaluate

    os.environ["DISABLE_MULTIPROC"] = "1"
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in argv and any(a.startswith("--") for a in argv):
        argv += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
