"""Evaluation during training: lm-eval tasks and/or perplexity on text every N steps and at the end.

The model is scored as it is at that step (its quantizers, current lambda, KV bits) through the same code
as `python -m bitnet_train.evaluate` (evaluate/lm.py, evaluate/perplexity.py), in eval mode without
gradients, then put back in train mode. Figures are logged to every logger of the trainer (CSV, TensorBoard,
W&B, ...) as `eval/<task>/<metric>` and `eval/perplexity/<figure>`; `final` holds the last evaluation, which
`evaluation_metrics(callbacks)` returns for metrics.json. Runs on global rank zero (single process or DDP;
a sharded strategy would need every rank in the forward, so it is not supported there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import lightning.pytorch as pl
import torch

from bitnet_train.config import ConfigError

log = logging.getLogger(__name__)


class EvaluationCallback(pl.Callback):
    def __init__(self, enabled: bool = False, every_n_steps: int = 0, at_end: bool = True,
                 tasks: list[str] | str | None = None, limit: float | None = None, num_fewshot: int | None = None,
                 text: list[str] | str | None = None, documents: int | None = 200, stride: int | None = None,
                 max_length: int | None = None, batch_size: int = 8, tokenizer: str | None = None) -> None:
        self.enabled, self.every_n_steps, self.at_end = bool(enabled), int(every_n_steps or 0), bool(at_end)
        self.tasks = [t for t in (tasks.split(",") if isinstance(tasks, str) else list(tasks or [])) if t]
        self.limit, self.num_fewshot = limit, num_fewshot
        self.text = [text] if isinstance(text, str) else list(text or [])
        self.documents, self.stride, self.max_length, self.batch_size = documents, stride, max_length, batch_size
        self.tokenizer_path = tokenizer
        self.final: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._texts: list[str] | None = None
        if self.enabled:
            if not self.tasks and not self.text:
                raise ConfigError("callbacks.evaluation.enabled=true but no tasks and no text: set "
                                  "callbacks.evaluation.tasks=[austen_cloze] and/or callbacks.evaluation.text=[FILE]")
            if self.every_n_steps < 0:
                raise ConfigError(f"callbacks.evaluation.every_n_steps={every_n_steps} must be >= 0 (0: only at the end)")
            if self.tasks:
                from bitnet_train.evaluate.task_names import check_tasks

                check_tasks(self.tasks)
            if self.text:
                from bitnet_train.evaluate.perplexity import read_texts

                self._texts = read_texts(self.text, limit=self.documents)

    def _evaluable(self, trainer, module):
        from bitnet_train.data.tokenizer import load_tokenizer
        from bitnet_train.evaluate.sources import Evaluable

        model = module.model
        tok = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tok is None or self.tokenizer_path is not None:
            tok = load_tokenizer(self.tokenizer_path)
        length = self.max_length or model.config.max_position_embeddings
        return Evaluable(model, tok, "checkpoint", Path("<training>"), int(length), module.device)

    def evaluate(self, trainer, module) -> dict[str, Any]:
        """Run the configured tasks / perplexity now; returns {"step", "tasks", "perplexity"}."""
        ev = self._evaluable(trainer, module)
        out: dict[str, Any] = {"step": int(trainer.global_step)}
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                if self._texts:
                    from bitnet_train.evaluate.perplexity import perplexity

                    out["perplexity"] = perplexity(ev, self._texts, self.stride, self.max_length, self.batch_size)
                if self.tasks:
                    from bitnet_train.evaluate.harness import run_tasks, summarize
                    from bitnet_train.evaluate.lm import BitnetLM

                    out["tasks"] = summarize(run_tasks(BitnetLM(evaluable=ev, batch_size=self.batch_size), self.tasks,
                                                       self.num_fewshot, self.limit, verbosity="ERROR",
                                                       bootstrap_iters=0))
        finally:
            module.train(was_training)
        return out

    def _run(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        result = self.evaluate(trainer, module)
        flat = {f"eval/perplexity/{k}": float(v) for k, v in result.get("perplexity", {}).items()}
        for task, metrics in result.get("tasks", {}).items():
            flat.update({f"eval/{task}/{k}": float(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=result["step"])
        log.info("evaluation at step %d: %s", result["step"], flat)
        self.history.append(result)
        self.final = result

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.enabled and self.every_n_steps and step > 0 and step % self.every_n_steps == 0 \
                and (not self.history or self.history[-1]["step"] != step):
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.enabled and self.at_end and (not self.history or self.history[-1]["step"] != trainer.global_step):
            self._run(trainer, pl_module)


def evaluation_metrics(callbacks: Iterable[Any]) -> dict[str, Any]:
    """{"evaluation": last figures} of the first enabled EvaluationCallback that ran, else {} (for metrics.json)."""
    for cb in callbacks:
        if isinstance(cb, EvaluationCallback) and cb.final is not None:
            return {"evaluation": cb.final}
    return {}
