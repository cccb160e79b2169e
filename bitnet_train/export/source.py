"""What the exporters read: a trained checkpoint, turned back into the training-time quantized model.

Accepted checkpoints (the first that matches wins):
1. A Lightning checkpoint (`checkpoints/last.ckpt` of a run): a torch-saved dict with `state_dict`
   (keys `model.` + decoder names) and `hyper_parameters` holding the `model` and `quant` settings.
2. A consolidated checkpoint, as the distributed strategies produce after training (FSDP2 through
   torch's `dcp_to_torch_save`, DeepSpeed through `zero_to_fp32`), or any plain state dict: a
   torch-saved file (.ckpt/.pt/.pth/.bin) or a .safetensors file holding the model's tensors, flat or
   under `state_dict` / `model` / `module`. Wrapper prefixes (`_forward_module.`, `module.`,
   `_orig_mod.`) and the LightningModule's `model.` prefix are removed. The settings come from
   `hyper_parameters` in the file when present, else from `--config FILE`, else from a
   `config.yaml` / `config.json` / `hparams.yaml` beside the checkpoint or one folder up (a run's
   `config_resolved.yaml` and `.hydra/config.yaml` qualify): a mapping with `model` and `quant`.
The tokenizer: `--tokenizer PATH`, else `data.tokenizer` of the run configuration found beside the
checkpoint (null there means the shipped tokenizer); without either, export stops and asks for it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from bitnet_train.config import ConfigError, ModelConfig, QuantConfig, from_mapping
from bitnet_train.data.tokenizer import SHIPPED_TOKENIZER, Tokenizer, load_tokenizer
from bitnet_train.models.decoder import CausalLM
from bitnet_train.paths import shipped_dir
from bitnet_train.quant.convert import bitlinear_modules, quantize_model, set_lambda

_WRAPPERS = ("_forward_module.", "module.", "_orig_mod.")
_CONFIG_NAMES = ("config_resolved.yaml", "config.yaml", "config.json", "hparams.yaml", ".hydra/config.yaml")
_TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Source:
    """A checkpoint ready to export: the quantized model (eval, lambda 1), or the full-precision one
    (quant_cfg.enabled false, see load_source), and what describes it."""

    model: CausalLM
    model_cfg: ModelConfig
    quant_cfg: QuantConfig
    tokenizer: Tokenizer
    tokenizer_path: Path
    checkpoint: Path


def _read_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give a .ckpt, .pt or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in _TORCH_SUFFIXES:
        raise ConfigError(f"checkpoint {path} has suffix {path.suffix!r}; expected one of "
                          f"{', '.join(_TORCH_SUFFIXES + ('.safetensors',))}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated zip, pickle errors, not a torch file
        raise ConfigError(f"checkpoint {path} cannot be read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120]}); is it a torch checkpoint?") from None
    if not isinstance(obj, Mapping):
        raise ConfigError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _state_dict(obj: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state = obj
    for key in ("state_dict", "model", "module"):
        inner = state.get(key) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"checkpoint {path} holds no tensors (looked at the top level and under "
                          "'state_dict', 'model', 'module')")
    out = {}
    for name, tensor in tensors.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPERS:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        out[name] = tensor
    if any(k.startswith("model.model.") or k == "model.lm_head.weight" for k in out):  # LightningModule prefix
        out = {k[len("model."):]: v for k, v in out.items() if k.startswith("model.")}
    return out


def _find_run_config(path: Path, explicit: Path | None) -> tuple[Mapping[str, Any] | None, Path | None]:
    # a run's checkpoint sits in RUN/checkpoints/, a distillation stage's one folder deeper (RUN/stageN/checkpoints/)
    candidates = [explicit] if explicit is not None else [
        folder / name for folder in (path.parent, path.parent.parent, path.parent.parent.parent)
        for name in _CONFIG_NAMES]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            if candidate.suffix == ".json":
                data = json.loads(candidate.read_text())
            else:
                from omegaconf import OmegaConf

                data = OmegaConf.to_container(OmegaConf.load(candidate), resolve=False)
            if not isinstance(data, Mapping):
                raise ConfigError(f"config {candidate} is not a mapping with 'model' and 'quant' sections")
            return data, candidate
    if explicit is not None:
        raise ConfigError(f"--config {explicit} does not exist")
    return None, None


def _settings(obj: Mapping[str, Any], run_cfg: Mapping[str, Any] | None, cfg_path: Path | None,
              path: Path) -> tuple[ModelConfig, QuantConfig]:
    hparams = obj.get("hyper_parameters") if isinstance(obj.get("hyper_parameters"), Mapping) else None
    source = hparams if hparams is not None and "model" in hparams else run_cfg
    where = f"checkpoint {path}" if source is hparams else f"config {cfg_path}"
    if source is None or "model" not in source:
        raise ConfigError(f"checkpoint {path} carries no model settings and no config was found beside it; "
                          "pass --config FILE with 'model' and 'quant' sections (e.g. the run's config_resolved.yaml)")
    model_cfg = from_mapping(ModelConfig, "model", source["model"])
    quant_cfg = from_mapping(QuantConfig, "quant", source.get("quant") or {})
    if model_cfg.vocab_size is None:
        raise ConfigError(f"{where} has model.vocab_size=null; the trained vocabulary size is needed")
    return model_cfg, quant_cfg


def _tokenizer_path(explicit: str | Path | None, run_cfg: Mapping[str, Any] | None, cfg_path: Path | None,
                    path: Path) -> Path | None:
    if explicit is not None:
        return Path(explicit).expanduser()
    data = (run_cfg or {}).get("data")
    if isinstance(data, Mapping) and "tokenizer" in data:
        value = data["tokenizer"]
        if value is None:
            return None  # the shipped tokenizer
        candidate = Path(str(value)).expanduser()
        if not candidate.exists():
            raise ConfigError(f"config {cfg_path} names data.tokenizer={value!r}, which does not exist from here; "
                              "pass --tokenizer PATH")
        return candidate
    raise ConfigError(f"no tokenizer is known for checkpoint {path}: pass --tokenizer PATH (a sentencepiece "
                      ".model file or a transformers tokenizer folder), or keep the run's config beside it")


def load_source(checkpoint: str | Path, config: str | Path | None = None,
                tokenizer: str | Path | None = None, full_precision_ok: bool = False) -> Source:
    """The checkpoint's quantized model, settings and tokenizer (see module docstring), or ConfigError.

    A full-precision checkpoint (quant.enabled=false) is refused unless `full_precision_ok` (the
    transformers export writes it as a plain transformers model); its Source holds the unquantized model.
    """
    path = Path(checkpoint).expanduser()
    obj = _read_file(path)
    state = _state_dict(obj, path)
    run_cfg, cfg_path = _find_run_config(path, Path(config).expanduser() if config is not None else None)
    model_cfg, quant_cfg = _settings(obj, run_cfg, cfg_path, path)
    if not quant_cfg.enabled and not full_precision_ok:
        raise ConfigError(f"checkpoint {path} was trained in full precision (quant.enabled=false): there are no "
                          "ternary weights to pack; --format hf writes it as a full-precision transformers model")
    tok_path = _tokenizer_path(tokenizer, run_cfg, cfg_path, path)
    tok = load_tokenizer(tok_path)
    if tok.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"tokenizer {tok.name} has {tok.vocab_size} tokens, the model only {model_cfg.vocab_size}; "
                          "pass the tokenizer the model was trained with (--tokenizer)")
    model = CausalLM(model_cfg)
    if quant_cfg.enabled:
        quantize_model(model, quant_cfg)
    ours = model.state_dict()
    missing = sorted(k for k in ours if k not in state and not (k == "lm_head.weight" and model_cfg.tie_word_embeddings))
    unexpected = sorted(k for k in state if k not in ours)
    if missing or unexpected:
        raise ConfigError(f"checkpoint {path} does not match its model/quant settings: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(ours[key].shape):
            raise ConfigError(f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, the settings give "
                              f"{tuple(ours[key].shape)}")
    model.load_state_dict(state, strict=False)
    if not quant_cfg.enabled:
        return Source(model.eval(), model_cfg, quant_cfg, tok, tok_path or shipped_dir() / SHIPPED_TOKENIZER, path)
    if quant_cfg.weight_lambda < 1 or quant_cfg.activation_lambda < 1:
        warnings.warn(f"checkpoint settings have weight_lambda={quant_cfg.weight_lambda}, activation_lambda="
                      f"{quant_cfg.activation_lambda}; the export is fully quantized (lambda 1)", stacklevel=2)
    set_lambda(model, 1.0, 1.0)
    if not bitlinear_modules(model):
        raise ConfigError(f"checkpoint {path}: no linear layer is quantized; nothing to pack")
    return Source(model.eval(), model_cfg, quant_cfg, tok, tok_path or shipped_dir() / SHIPPED_TOKENIZER, path)
