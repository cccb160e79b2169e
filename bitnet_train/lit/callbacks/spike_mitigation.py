"""Loss-spike mitigation for the spike monitor: adaptive gradient clipping, skip the batch, or roll back.

Modes (spike monitor setting `mitigation`):
  zclip     adaptive gradient clipping with the `zclip` package (ZClip: z-score of the gradient norm
            against its EMA, Kumar et al. 2025); every step, before the optimizer.
  skip      a step whose loss is a spike (robust z-score above the monitor's threshold, judged
            before the update) applies no update: its gradients are dropped, the batch is skipped.
  rollback  the PaLM recipe (Chowdhery et al. 2022, section 5.1): on a spike, restore the weights and
            optimizer state of the last good snapshot (taken every `rollback_every` steps, before that
            step's update) and skip the data between it and the spike: the step counter, the learning
            rate schedule and the data stream go on from the spike, so the batches in between are never
            trained on.
Each action is an event (`{"event": "mitigation", "action": ...}` in the JSONL and `spike/mitigation/*`
in every logger). The zclip statistics and the snapshot are part of the monitor's checkpoint state,
so a resumed run mitigates exactly as an uninterrupted one (the snapshot costs one CPU copy of the
weights and optimizer state, in memory and in each checkpoint).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from bitnet_train.config import ConfigError

MODES = ("none", "zclip", "skip", "rollback")


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


class SpikeMitigation:
    def __init__(self, mode: str = "none", rollback_every: int = 20, zclip: dict[str, Any] | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"spike monitor mitigation={mode!r} is not one of {', '.join(MODES)}")
        if isinstance(rollback_every, bool) or not isinstance(rollback_every, int) or rollback_every < 1:
            raise ConfigError(f"spike monitor rollback_every={rollback_every!r} must be an integer >= 1")
        self.mode, self.rollback_every = mode, rollback_every
        self.zclip_settings = dict(zclip or {})
        self.zclip = None
        if mode == "zclip":
            try:
                from zclip import ZClip
            except ImportError:
                raise ConfigError("spike monitor mitigation=zclip needs the zclip package: "
                                  "pip install 'bitnet_train[spikes]'") from None

            try:
                self.zclip = ZClip(**self.zclip_settings)
            except TypeError as err:
                raise ConfigError(f"spike monitor zclip settings {self.zclip_settings}: {err}") from None
        self.snapshot: dict[str, Any] | None = None

    @property
    def needs_loss(self) -> bool:
        return self.mode in ("skip", "rollback")

    # ---- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.zclip is not None:
            out["zclip"] = {k: getattr(self.zclip, k) for k in ("buffer", "initialized", "mean", "var")}
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.zclip is not None and "zclip" in state:
            for key, value in state["zclip"].items():
                setattr(self.zclip, key, copy.copy(value))
        self.snapshot = state.get("snapshot")

    # ---- per step --------------------------------------------------------------------------------
    def before_step(self, trainer, pl_module, optimizer, step: int, loss: float | None, z: float | None,
                    threshold: float, grad_norm: float | None) -> dict[str, Any] | None:
        """Act on this step before the optimizer; return the event record of an action, or None."""
        if grad_norm is not None and not math.isfinite(grad_norm) or loss is not None and not math.isfinite(loss):
            return None  # non-finite steps are the NonFiniteGuard's
        if self.mode == "zclip":
            norm = self.zclip.step(pl_module)
            after = _total_norm(optimizer)
            if norm > 0 and after < norm * (1 - 1e-4):
                return {"action": "zclip", "grad_norm": norm, "clipped_to": after}
            return None
        if not self.needs_loss or z is None:
            return None
        if z > threshold:
            event = {"action": self.mode, "loss": loss, "z": z}
            if self.mode == "rollback":
                if self.snapshot is None:
                    event["action"], event["note"] = "skip", "no snapshot yet"
                else:
                    self._restore(pl_module, optimizer)
                    event.update(restored_step=self.snapshot["step"], skipped_steps=step - self.snapshot["step"] + 1)
            _drop_gradients(optimizer)
            return event
        if self.mode == "rollback" and step % self.rollback_every == 0:
            self.snapshot = {"step": step, "model": _to_cpu(pl_module.state_dict()),
                             "optimizer": _to_cpu(optimizer.state_dict())}
        return None

    def _restore(self, pl_module, optimizer) -> None:
        pl_module.load_state_dict(self.snapshot["model"])
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(copy.deepcopy(self.snapshot["optimizer"]))
        for group, values in zip(optimizer.param_groups, hyper):  # lr and weight decay follow the step, not the snapshot
            group.update(values)


def _drop_gradients(optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def _total_norm(optimizer) -> float:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.stack([n.float() for n in torch._foreach_norm(grads)]).square().sum().sqrt())
