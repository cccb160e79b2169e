"""Loss-spike monitor: per-step loss, gradient norms, learning rate, lambdas and quantization statistics.

Each optimizer step records
  train/loss                    mean loss of the step's micro-batches
  lr                            learning rate of the first parameter group, as used by the step
  grad_norm/total, grad_norm/G  L2 norm of the gradients (before clipping), overall and per group G:
                                layers.N (decoder layer N), embed, head (an untied lm_head), other
  lambda/weight, lambda/activation, lambda/{weight,activation}/G
                                mean phase-in strength of the quantized linears, overall and per group
                                (and per linear, lambda/weight/<module name>, with per_module_lambdas)
  monitor/zero_frac, monitor/flip_frac
                                share of ternary codes at 0, and of codes changed since the last
                                record (every `quant_stats_every_n_steps` steps; quant_stats.py)
  spike/z                       robust z-score of the loss (monitor/spikes.py)
and, on the step where they happen, the events
  spike/onset (= loss - baseline), spike/height and spike/recovery_steps (when the event ends),
  and the transitions of the run (from a TransitionCallback, with their names).

Everything goes to every configured logger (the per-step values through LightningModule.log, so at
the trainer's log_every_n_steps; events directly, on their own step) and, every step, to a JSONL
file (`path`; one JSON object per line, flushed as written, readable while the run goes on or
after it was killed): records `{"step": ...}` and events `{"event": "spike" | "spike_end" |
"transition" | "start", ...}`. tools/spikes.py reads this file first. Steps are 0-based optimizer
steps: step t is the update made with the lambdas of step t. Gradient norms are local: under
FSDP/ZeRO sharding they cover the local shard only.

Mitigation (`mitigation`: none, zclip, skip or rollback; spike_mitigation.py) acts before the
optimizer step; each action is an event `{"event": "mitigation", "action": ...}` in the JSONL and
`spike/mitigation/ACTION` in every logger.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch

from bitnet_train.config import ConfigError
from bitnet_train.strict_json import strict_json
from bitnet_train.lit.callbacks.quant_stats import QuantStatsCallback
from bitnet_train.lit.callbacks.spike_mitigation import SpikeMitigation
from bitnet_train.monitor.spikes import Spike, SpikeDetector, SpikeSettings
from bitnet_train.quant.convert import bitlinear_modules

log = logging.getLogger(__name__)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def param_group(name: str) -> str:
    """Monitoring group of a parameter or module name: layers.N, embed, head or other."""
    match = _LAYER.search(name)
    if match:
        return f"layers.{match.group(1)}"
    if "embed_tokens" in name:
        return "embed"
    if "lm_head" in name:
        return "head"
    return "other"


class SpikeMonitor(L.Callback):
    def __init__(self, path: str | None = None, window: int = 50, threshold: float = 6.0, min_history: int = 20,
                 min_rel_scale: float = 0.005, recover_fraction: float = 0.9, recover_window: int = 5,
                 max_event_steps: int = 1000,
                 quant_stats_every_n_steps: int = 10, group_grad_norms: bool = True,
                 per_module_lambdas: bool = False, mitigation: str = "none", rollback_every: int = 20,
                 zclip: dict[str, Any] | None = None) -> None:
        self.path = path
        self.settings = SpikeSettings(window=window, threshold=threshold, min_history=min_history,
                                      min_rel_scale=min_rel_scale, recover_fraction=recover_fraction,
                                      recover_window=recover_window, max_event_steps=max_event_steps)
        if not (isinstance(quant_stats_every_n_steps, int) and quant_stats_every_n_steps >= 0):
            raise ConfigError(f"spike monitor quant_stats_every_n_steps={quant_stats_every_n_steps!r} must be an "
                              "integer >= 0 (0 turns them off)")
        self.quant_stats_every_n_steps = quant_stats_every_n_steps
        self.group_grad_norms = group_grad_norms
        self.per_module_lambdas = per_module_lambdas
        self.detector = SpikeDetector(self.settings)
        self.mitigation = SpikeMitigation(mitigation, rollback_every, dict(zclip) if zclip else None)
        self._pre_loss: torch.Tensor | None = None
        self._quant_stats = QuantStatsCallback(every_n_steps=1, per_layer=False)
        self._file: TextIO | None = None
        self._groups: dict[str, list[torch.nn.Parameter]] = {}
        self._transitions: dict[int, list[str]] = {}
        self._seen_global_step = -1
        self._reset_step()

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _reset_step(self) -> None:
        self._loss_sum: torch.Tensor | None = None
        self._grad_norms: dict[str, torch.Tensor] = {}
        self._lr: float | None = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(strict_json(record)) + "\n")
            self._file.flush()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._groups = {}
        for name, p in pl_module.named_parameters():
            if p.requires_grad:
                self._groups.setdefault(param_group(name), []).append(p)

    def state_dict(self) -> dict[str, Any]:
        """The detector's window and events, so that a resumed run flags exactly what an uninterrupted one does."""
        return {"window": list(self.detector._window), "recent": list(self.detector._recent),
                "spikes": [vars(s).copy() for s in self.detector.spikes],
                "open": self.detector.spikes.index(self.detector._open) if self.detector._open else None,
                "mitigation": self.mitigation.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.detector = SpikeDetector(self.settings)
        self.detector._window.extend(state_dict.get("window", []))
        self.detector._recent.extend(state_dict.get("recent", []))
        self.detector.spikes = [Spike(**s) for s in state_dict.get("spikes", [])]
        if state_dict.get("open") is not None:
            self.detector._open = self.detector.spikes[state_dict["open"]]
        self.mitigation.load_state_dict(state_dict.get("mitigation", {}))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_global_step = trainer.global_step
        self._transitions = {}
        found = []
        for cb in trainer.callbacks:
            for t in getattr(cb, "transitions", []) or []:
                self._transitions.setdefault(t.step, []).append(t.name)
                found.append({"name": t.name, "step": t.step, "optimizer": t.optimizer})
        if trainer.is_global_zero:
            path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "monitor.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
            self.path = str(path)
            self._write({"event": "start", "step": trainer.global_step, "time": time.time(), "transitions": found,
                         "spike_settings": vars(self.settings), "mitigation": self.mitigation.mode})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---- per step -------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._lr is None and trainer.optimizers:
            self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.mitigation.needs_loss:  # the step's loss, before the update (Lightning scales it per micro-batch)
            loss = loss.detach().float()
            self._pre_loss = loss if self._pre_loss is None else self._pre_loss + loss

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        squares = {}
        for group, params in self._groups.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                norms = torch._foreach_norm(grads)
                squares[group] = torch.stack([n.float() for n in norms]).square().sum()
        if squares:
            self._grad_norms = {"grad_norm/total": torch.stack(list(squares.values())).sum().sqrt()}
            if self.group_grad_norms:
                self._grad_norms.update({f"grad_norm/{g}": v.sqrt() for g, v in squares.items()})
        if self.mitigation.mode != "none":
            self._mitigate(trainer, pl_module, optimizer)

    def _mitigate(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        pre, self._pre_loss = self._pre_loss, None
        if pre is not None and trainer.world_size > 1:  # judge the global batch's loss, the same on every rank
            pre = trainer.strategy.reduce(pre, reduce_op="mean")
        loss = float(pre) if pre is not None else None
        z = self.detector.score(loss) if loss is not None and math.isfinite(loss) else None
        total = self._grad_norms.get("grad_norm/total")
        step = trainer.global_step
        event = self.mitigation.before_step(trainer, pl_module, optimizer, step, loss, z, self.settings.threshold,
                                            float(total) if total is not None else None)
        if event is None:
            return
        log.warning("spike mitigation at step %d: %s", step, ", ".join(f"{k}={v}" for k, v in event.items()))
        self._write({"event": "mitigation", "step": step, **event})
        if trainer.is_global_zero:
            value = float(event.get("skipped_steps", event.get("clipped_to", 1.0)))
            for logger in trainer.loggers:
                logger.log_metrics({f"spike/mitigation/{event['action']}": value}, step=step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):  # Lightning divides it by accumulate_grad_batches: the sum is the step mean
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if trainer.global_step == self._seen_global_step:
            return  # more micro-batches of this optimizer step to come
        self._seen_global_step = trainer.global_step
        step = trainer.global_step - 1
        metrics = self._collect(trainer, pl_module, step)
        self._reset_step()
        loss_value = metrics.pop("train/loss", None)
        events = []
        if loss_value is not None:  # a step whose training_step returned no loss has nothing to judge
            events = self.detector.update(step, loss_value)
            metrics["spike/z"] = self.detector.last_z if math.isfinite(self.detector.last_z) else 1e30
        pl_module.log_dict({k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False)
        record = {"step": step, **({"train/loss": loss_value} if loss_value is not None else {}), **metrics}
        if step in self._transitions:
            record["transition"] = ",".join(self._transitions[step])
            for name in self._transitions[step]:
                self._write({"event": "transition", "step": step, "name": name})
        self._write(record)
        for kind, spike in events:
            self._report(trainer, kind, spike)

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        values: dict[str, torch.Tensor | float] = dict(self._grad_norms)
        if self._loss_sum is not None:
            values["train/loss"] = self._loss_sum
        keys, tensors = zip(*values.items()) if values else ((), ())
        out = dict(zip(keys, torch.stack([t.reshape(()).float() for t in tensors]).tolist())) if tensors else {}
        if self._lr is not None:
            out["lr"] = self._lr
        out.update(self._lambdas(pl_module, self.per_module_lambdas))
        n = self.quant_stats_every_n_steps
        if n and step % n == 0:
            stats = self._quant_stats.stats(getattr(pl_module, "model", pl_module))
            for key in ("zero_frac", "flip_frac"):
                if f"quant/{key}" in stats:
                    out[f"monitor/{key}"] = stats[f"quant/{key}"]
        return out

    @staticmethod
    def _lambdas(pl_module: L.LightningModule, per_module: bool = False) -> dict[str, float]:
        layers = bitlinear_modules(getattr(pl_module, "model", pl_module))
        if not layers:
            return {}
        sums: dict[str, list[float]] = {}
        for name, layer in layers.items():
            for kind, value in (("weight", layer.weight_lambda), ("activation", layer.activation_lambda)):
                sums.setdefault(f"lambda/{kind}", []).append(value)
                sums.setdefault(f"lambda/{kind}/{param_group(name)}", []).append(value)
                if per_module:
                    sums[f"lambda/{kind}/{name}"] = [value]
        return {key: sum(v) / len(v) for key, v in sums.items()}

    def _report(self, trainer: L.Trainer, kind: str, spike: Spike) -> None:
        if kind == "onset":
            log.warning("loss spike at step %d: %.4g over a baseline of %.4g (z=%.1f)", spike.onset,
                        spike.peak - spike.baseline, spike.baseline, spike.z)
            self._write({"event": "spike", "step": spike.onset, "z": spike.z, "baseline": spike.baseline,
                         "loss": spike.peak})
            metrics = {"spike/onset": spike.peak - spike.baseline}
            step = spike.onset
        else:
            self._write({"event": "spike_end", "step": spike.onset, "peak_step": spike.peak_step,
                         "height": spike.height, "recovery_steps": spike.recovery_steps})
            metrics = {"spike/height": spike.height}
            if spike.recovery_steps is not None:
                metrics["spike/recovery_steps"] = float(spike.recovery_steps)
            step = spike.recovered_step if spike.recovered_step is not None else trainer.global_step - 1
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(v)}, step=step)
