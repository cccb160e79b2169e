"""Read `init_from=PATH`: existing 16-bit weights to start a run from, and the architecture that comes with them.

`init_from=PATH` accepts
  - a Lightning checkpoint written by bitnet_train (normally a full-precision run, quant.enabled=false):
    the architecture comes from its saved `model` hyperparameters, the weights from its state_dict;
  - a transformers folder (config.json + weights) of a Llama, Qwen2, Qwen3, Mistral or BitNet causal LM:
    the architecture is mapped by models/hf.py (which refuses what the decoder cannot mirror), the
    weights are read with transformers and renamed to ours. A folder that also holds tokenizer files
    is the default tokenizer of the run.
The architecture of the source replaces the `model` settings of the run; models/init_from.py copies the
weights in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bitnet_train.config import ConfigError, ModelConfig, from_mapping
from bitnet_train.data.tokenizer import _HF_TOKENIZER_FILES
from bitnet_train.lit.checkpoint_io import load_checkpoint_file
from bitnet_train.models.hf import from_hf_state_dict, model_config_from_hf


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
