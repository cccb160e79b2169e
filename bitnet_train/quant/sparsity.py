"""Activation sparsity per projection type, as BitNet a4.8 reports it (its Table 2).

For every BitLinear, the share of exact zeros in the activation its ternary weight multiplies (the
layer's own `quantized_input`: norm, rotation, quantizer, so an INT4 code that rounds to 0, an entry
that top-K dropped, or a zero from relu^2 all count). a4.8 counts the up projection as sparse where
the gated squared ReLU makes its output unused (relu(gate) == 0 there, so that row of W_up need not
be computed): its "Up" sparsity is 1 - (1 - input zeros)(1 - zero share of relu(gate)). The
"Overall" figure is the share of projection parameters not needed for a token: each projection's
sparsity weighted by its parameter count (in x out), which reproduces the paper's 42.5% at 700M from
its per-projection numbers. Types: qkv (q/k/v_proj), out (o_proj), up, gate, down.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn

from bitnet_train.quant.convert import bitlinear_modules

TYPES = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "out", "up_proj": "up",
         "gate_proj": "gate", "down_proj": "down"}
ORDER = ("qkv", "out", "up", "gate", "down")


class ActivationSparsity:
    """Context manager: count zeros while the model runs forward passes inside it; `report()` after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.zeros: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.params: dict[str, int] = defaultdict(int)
        self.gate_zero = [0.0, 0.0]
        self._handles: list = []

    def __enter__(self) -> "ActivationSparsity":
        layers = bitlinear_modules(self.model)
        if not layers:
            raise ValueError("the model has no quantized linears to measure")
        for name, layer in layers.items():
            kind = TYPES.get(name.rsplit(".", 1)[-1])
            if kind is None:
                continue
            self.params[kind] += layer.in_features * layer.out_features
            self._handles.append(layer.register_forward_pre_hook(self._input_hook(kind)))
        for module in self.model.modules():
            if getattr(module, "relu2", False) and isinstance(getattr(module, "gate_proj", None), nn.Module):
                self._handles.append(module.gate_proj.register_forward_hook(self._gate_hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _input_hook(self, kind: str):
        def hook(layer, args):
            with torch.no_grad():
                xq = layer.quantized_input(args[0])
            self.zeros[kind] += float((xq == 0).sum())
            self.counts[kind] += xq.numel()
        return hook

    def _gate_hook(self, module, args, out) -> None:
        self.gate_zero[0] += float((out.detach() <= 0).sum())
        self.gate_zero[1] += out.numel()

    def report(self) -> dict[str, float]:
        """Sparsity (0..1) per type (`up` as a4.8 counts it), `up_input`, `gate_output` and `overall`."""
        out = {kind: self.zeros[kind] / self.counts[kind] for kind in ORDER if self.counts[kind]}
        gate_out = self.gate_zero[0] / self.gate_zero[1] if self.gate_zero[1] else 0.0
        if "up" in out:
            out["up_input"] = out["up"]
            out["up"] = 1 - (1 - out["up_input"]) * (1 - gate_out)
        out["gate_output"] = gate_out
        total = sum(self.params[k] for k in out if k in self.params)
        out["overall"] = sum(self.params[k] * out[k] for k in ORDER if k in out) / total if total else 0.0
        return out
