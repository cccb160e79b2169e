"""Model transforms for tools/bench_qat.py: our own variants and the peers' quantized linears.

Every transform takes a freshly built `CausalLM` (full precision, plain nn.Linear layers) and
changes it in place before the optimizer is created. Embeddings and lm_head (tied to the
embedding) always stay full precision, as in docs/METHODS.md#bitlinear-b158. A transform that cannot run here
raises `Unavailable` with the reason; the benchmark prints that reason instead of a number.

What the peers compute (read from their installed source; see docs/BENCHMARKS.md):
  bitlinear 2.4.6 (PyPI `bitlinear`): `BitLinear(nn.Linear)`; defaults: a parameter-free
      LayerNorm on the input of every linear, weight scale 1/median(|W|), activation scale
      128/max(|x|) clamped to [-128, 127] (clips positive maxima), scales in the input dtype.
  onebitllms 0.0.4 (PyPI `onebitllms`): `BitNetLinear`; quantizers are Triton kernels that assert
      CUDA tensors, and the package imports triton at import time.
  torchao (PyPI `torchao`): `quantize_(model, bitnet_training())` wraps each weight in a tensor
      subclass whose F.linear runs a real int8 x int8 -> int32 matmul (torch._int_mm) and saves
      int8 activations and weights for backward.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

EXCLUDE = ("lm_head", "*embed_tokens*")
"""Module-name patterns never quantized (same defaults as bitnet_train's QuantConfig)."""


class Unavailable(RuntimeError):
    """This variant cannot be built or run here; the message says why."""


def _targets(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if type(m) is nn.Linear and not any(fnmatch.fnmatchcase(name, p) or
                                                fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], p)
                                                for p in EXCLUDE)]


def _swap(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> int:
    names = _targets(model)
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, make(name, getattr(parent, leaf)))
    return len(names)


# --------------------------------------------------------------------------- our variants

def fp(model: nn.Module) -> str:
    return "full precision (nn.Linear)"


def fp_subln(model: nn.Module) -> str:
    """Ablation: full precision plus the two sub-layer RMSNorms of `subln` (no quantizers)."""
    from bitnet_train.quant.norm import RMSNorm

    def make(name: str, linear: nn.Linear) -> nn.Module:
        if name.rsplit(".", 1)[-1] in ("o_proj", "down_proj"):
            return nn.Sequential(RMSNorm(linear.in_features, eps=1e-5), linear)
        return linear

    _swap(model, make)
    return "FP + RMSNorm before o_proj and down_proj (ablation: norm cost without quantizers)"


def b158(model: nn.Module, norm: str = "subln", int_matmul: str = "auto", fused_kernels: str = "auto") -> str:
    from bitnet_train.config import QuantConfig
    from bitnet_train.quant import quantize_model

    n = len(quantize_model(model, QuantConfig(norm=norm, int_matmul=int_matmul, fused_kernels=fused_kernels)))
    return (f"bitnet_train BitLinear x{n}, QuantConfig(norm={norm!r}, int_matmul={int_matmul!r}, "
            f"fused_kernels={fused_kernels!r})")


def b158_fakequant(model: nn.Module) -> str:
    return b158(model, int_matmul="off")


def b158_unfused(model: nn.Module) -> str:
    from bitnet_train.quant.bitlinear import BitLinear

    label = b158(model)
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.fuse_input_norm = False
    return label + ", input norm not fused"


def b158_nonorm(model: nn.Module) -> str:
    return b158(model, norm="none")


def b158_torchops(model: nn.Module) -> str:
    return b158(model, fused_kernels="off")


# --------------------------------------------------------------------------- peers

def _import(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except Exception as err:  # noqa: BLE001 - any import failure is a reason to report
        raise Unavailable(f"`import {module}` failed: {type(err).__name__}: {err}") from None


def _package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise Unavailable(f"PyPI package `{dist}` is not installed (pip install {dist} torch==<yours>)") from None


def _bitlinear(model: nn.Module, **kwargs) -> str:
    ver = _package_version("bitlinear")
    bl = _import("bitlinear")

    def make(name: str, linear: nn.Linear) -> nn.Module:
        layer = bl.BitLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                             device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)
        layer.weight = linear.weight
        if linear.bias is not None:
            layer.bias = linear.bias
        return layer

    n = _swap(model, make)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "package defaults"
    return f"bitlinear {ver} BitLinear x{n} ({args})"


def bitlinear_default(model: nn.Module) -> str:
    """As a user gets it: LayerNorm before every linear, AbsMedian weights, 128/absmax activations."""
    return _bitlinear(model)


def bitlinear_absmean(model: nn.Module) -> str:
    """Closest configuration to ours (docs/METHODS.md#bitlinear-b158): AbsMean weight scale and no input norm (still 128/absmax)."""
    return _bitlinear(model, weight_measure="AbsMean", norm=None)


def onebitllms(model: nn.Module) -> str:
    ver = _package_version("onebitllms")
    device = next(model.parameters()).device
    mod = _import("onebitllms")  # imports triton first: fails where triton is missing
    if device.type != "cuda":
        import torch

        try:  # show what actually happens on this device
            probe = mod.BitNetLinear(8, 8).to(device)
            torch.nn.init.normal_(probe.weight)
            probe(torch.randn(1, 2, 8, device=device))
            observed = "a CPU forward unexpectedly ran"
        except Exception as err:  # noqa: BLE001
            observed = f"{type(err).__name__}: {err}"
        raise Unavailable(f"no CPU path: BitNetLinear.forward enters torch.cuda.device(...) and its Triton "
                          f"quantizers assert CUDA tensors (`assert w_2d.is_cuda`); here: {observed}")

    def make(name: str, linear: nn.Linear) -> nn.Module:
        layer = mod.BitNetLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight = linear.weight
        if linear.bias is not None:
            layer.bias = linear.bias
        return layer

    n = _swap(model, make)
    return f"onebitllms {ver} BitNetLinear x{n}"


def torchao_bitnet(model: nn.Module) -> str:
    ver = _package_version("torchao")
    ao = _import("torchao")
    qt = _import("torchao.prototype.quantized_training")
    targets = set(_targets(model))
    ao.quantize_(model, qt.bitnet_training(), filter_fn=lambda m, fqn: fqn in targets)
    return f"torchao {ver} quantize_(bitnet_training()) on {len(targets)} linears"


VARIANTS: dict[str, tuple[Callable[[nn.Module], str], bool, str]] = {
    # name: (transform, is_peer, short label)
    "fp": (fp, False, "full precision"),
    "fp_subln": (fp_subln, False, "FP + subln norms (ablation)"),
    "b158": (b158, False, "bitnet_train b1.58, subln"),
    "b158_nonorm": (b158_nonorm, False, "bitnet_train b1.58, norm=none"),
    "b158_fakequant": (b158_fakequant, False, "bitnet_train b1.58, subln, int_matmul=off"),
    "b158_unfused": (b158_unfused, False, "bitnet_train b1.58, subln, norm not fused"),
    "b158_torchops": (b158_torchops, False, "bitnet_train b1.58, subln, fused_kernels=off"),
    "bitlinear": (bitlinear_default, True, "PyPI bitlinear, defaults"),
    "bitlinear_absmean": (bitlinear_absmean, True, "PyPI bitlinear, AbsMean, no norm"),
    "onebitllms": (onebitllms, True, "PyPI onebitllms"),
    "torchao": (torchao_bitnet, True, "torchao bitnet_training"),
}
