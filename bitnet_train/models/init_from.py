"""Start a run from existing 16-bit weights: one of our checkpoints or a local transformers causal-LM folder.

`init_from=PATH` accepts
  - a Lightning checkpoint written by bitnet_train (normally a full-precision run, quant.enabled=false):
    the architecture comes from its saved `model` hyperparameters, the weights from its state_dict;
  - a transformers folder (config.json + weights) of a Llama, Qwen2, Qwen3, Mistral or BitNet causal LM:
    the architecture is mapped by models/hf.py (which refuses what the decoder cannot mirror), the
    weights are read with transformers and renamed to ours. A folder that also holds tokenizer files
    is the default tokenizer of the run.
The architecture of the source replaces the `model` settings of the run.

Loading is split around the quantization swap (quant/convert.py), so that it happens before
quantization: `load_base` copies every weight of the plain decoder, strictly by name and shape;
after the swap, `load_norms` copies input norms the source already has (BitNet's attn_sub_norm /
ffn_sub_norm, or the norms of a quantized checkpoint) and leaves the new ones at 1, as in the
"Extra RMSNorm" recipe and BitDistill.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from bitnet_train.config import ConfigError, ModelConfig, from_mapping

log = logging.getLogger(__name__)
NORM_SUFFIX = ".input_norm.weight"


@dataclass
class InitSource:
    """Weights (our names) and architecture read from `init_from`."""

    path: str
    kind: str
    """checkpoint or hf."""
    model: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer_dir: str | None = None
    """The folder itself when it holds tokenizer files (hf only)."""
    quantized: bool = False
    """The source was trained with quantization on (a checkpoint with quant.enabled=true, or a BitNet model)."""


def read_init_source(path: str) -> InitSource:
    """Read `init_from`, or raise a one-line ConfigError saying what is wrong with it."""
    p = Path(path).expanduser()
    if p.is_file():
        return _from_checkpoint(p)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"init_from={path} is a folder without config.json; give a transformers model folder "
                              "or a .ckpt file")
        return _from_hf(p)
    raise ConfigError(f"init_from={path} does not exist; give a bitnet_train .ckpt file or a transformers model folder")


def _from_checkpoint(path: Path) -> InitSource:
    from bitnet_train.lit.checkpoint_io import load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise ConfigError(f"init_from={path} has no model hyperparameters; it is not a bitnet_train checkpoint")
    model = from_mapping(ModelConfig, "model", hparams["model"])
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    quantized = bool((hparams.get("quant") or {}).get("enabled", False))
    return InitSource(str(path), "checkpoint", model, state, quantized=quantized)


def _from_hf(path: Path) -> InitSource:
    from transformers import AutoConfig, AutoModelForCausalLM

    from bitnet_train.data.tokenizer import _HF_TOKENIZER_FILES
    from bitnet_train.models.hf import from_hf_state_dict, model_config_from_hf

    try:
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # transformers raises many types
        raise ConfigError(f"init_from={path}: transformers cannot read config.json ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]})") from None
    model = model_config_from_hf(hf_config)
    if getattr(hf_config, "quantization_config", None):
        raise ConfigError(f"init_from={path} holds a quantized ({hf_config.quantization_config.get('quant_method')}) "
                          "model; give its full-precision weights")
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    except Exception as err:
        raise ConfigError(f"init_from={path}: transformers cannot load the weights ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]})") from None
    state = from_hf_state_dict(hf.state_dict())
    tokenizer = str(path) if any((path / f).is_file() for f in _HF_TOKENIZER_FILES) else None
    return InitSource(str(path), "hf", model, state, tokenizer_dir=tokenizer,
                      quantized=hf_config.model_type == "bitnet")


def _tied(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def load_base(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy every weight of the plain (not yet quantized) decoder from `state`; return the input norms left over."""
    ours = model.state_dict()
    state = dict(state)
    if _tied(model):
        state.pop("lm_head.weight", None)
    pending = {k: v for k, v in state.items() if k.endswith(NORM_SUFFIX)}
    rest = {k: v for k, v in state.items() if k not in pending}
    missing = sorted(k for k in ours if k not in rest and not (k == "lm_head.weight" and _tied(model)))
    unexpected = sorted(k for k in rest if k not in ours)
    if missing or unexpected:
        raise ConfigError(
            f"init_from weights do not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    with torch.no_grad():
        for key, tensor in rest.items():
            if tuple(tensor.shape) != tuple(ours[key].shape):
                raise ConfigError(f"init_from {key} has shape {tuple(tensor.shape)}, the model {tuple(ours[key].shape)}")
            ours[key].copy_(tensor.to(ours[key].dtype))
    return pending


def load_norms(model: nn.Module, pending: dict[str, torch.Tensor]) -> list[str]:
    """After quantization: copy the source's input norms; return the names of the new ones (left at 1)."""
    ours = {k: v for k, v in model.state_dict().items() if k.endswith(NORM_SUFFIX)}
    unknown = sorted(k for k in pending if k not in ours)
    if unknown:
        raise ConfigError(
            f"init_from has input norms the configured quantization does not place ({unknown[0]}, {len(unknown)} "
            "in all); choose the matching quant.norm (subln for BitNet sub-norms, all_linear for norms on every linear)")
    with torch.no_grad():
        for key, tensor in pending.items():
            ours[key].copy_(tensor.to(ours[key].dtype))
    new = sorted(k for k in ours if k not in pending)
    if new:
        log.info("init_from: %d new input norms start at 1 (e.g. %s)", len(new), new[0])
    return new
