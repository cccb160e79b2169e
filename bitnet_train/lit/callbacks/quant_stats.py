"""Per-layer statistics of the ternary weights, logged every few steps.

For each BitLinear: the fraction of weights quantized to 0, the fraction whose ternary code
changed since the previous log ("flips": the oscillation that precedes loss spikes in QAT), and
the scale gamma. Averages over all layers are logged too. Codes are kept as int8 between logs
(one byte per quantized weight, on the weight's device). Under FSDP2 or ZeRO-3 each weight is
gathered whole first, on every rank.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from bitnet_train.parallel.gather import gathered
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.quant.functional import ternary_codes, weight_scale


class QuantStatsCallback(L.Callback):
    def __init__(self, every_n_steps: int = 50, per_layer: bool = True) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps={every_n_steps} must be > 0")
        self.every_n_steps = every_n_steps
        self.per_layer = per_layer
        self._previous: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def stats(self, model: torch.nn.Module) -> dict[str, float]:
        """Current statistics (and remember the codes for the next flip count)."""
        out: dict[str, float] = {}
        totals = {"zero_frac": 0.0, "flip_frac": 0.0, "gamma": 0.0}
        layers = bitlinear_modules(model)
        flips_counted = 0
        for name, layer in layers.items():
            with gathered([layer.weight]) as (weight,):  # the whole matrix under FSDP2 / ZeRO-3 (collective)
                gamma = weight_scale(weight, layer.weight_scale)
                codes = ternary_codes(weight, gamma)
            row = {"zero_frac": (codes == 0).float().mean().item(), "gamma": gamma.item()}
            previous = self._previous.get(name)
            if previous is not None and previous.shape == codes.shape:
                row["flip_frac"] = (previous != codes).float().mean().item()
                flips_counted += 1
            self._previous[name] = codes
            for key, value in row.items():
                totals[key] += value
                if self.per_layer:
                    out[f"quant/{name}/{key}"] = value
        if layers:
            out["quant/zero_frac"] = totals["zero_frac"] / len(layers)
            out["quant/gamma_mean"] = totals["gamma"] / len(layers)
            if flips_counted:
                out["quant/flip_frac"] = totals["flip_frac"] / flips_counted
        return out

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step != 1:
            return
        metrics = self.stats(pl_module)
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)
