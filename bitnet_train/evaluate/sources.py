"""One loader for every model the project produces, computed as it was trained or exported.

`load_evaluable(path)` recognizes (first match wins):
- a transformers export folder (`config.json` + weights): AutoModelForCausalLM, which for our exports runs
  transformers' packed BitLinear (export/hf.py), with the folder's tokenizer;
- a native export (`.safetensors` whose header says `bitnet_train.ternary`): the packed runtime of
  bitnet_train.infer (its activation schemes, Hadamard rotations and KV bits from the file);
- a run's checkpoint, a consolidated checkpoint or any plain state dict (`.ckpt/.pt/.pth/.bin/.safetensors`):
  the training decoder with its quantizers (export/source.py reads the file, its settings and tokenizer),
  at the checkpoint's step of its run's schedule: the lambdas of quant.weight_lambda / activation_lambda
  or of a phase-in schedule, the norms it had switched on, the activation stage (`_as_trained`); a
  full-precision run (quant.enabled=false) is evaluated in full precision;
- a folder: a distillation stage (`stage1_refine/student.ckpt`, `stage*/checkpoints/last.ckpt`), a run
  folder (`checkpoints/last.ckpt`) or a distillation run folder (its latest stage), resolved to that file.
The run configuration is looked for up to three folders above the checkpoint, as the exporter does (stage
folders sit one level deeper than a run's own checkpoints).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bitnet_train.config import ConfigError

KINDS = ("checkpoint", "native", "transformers")
_STAGES = ("stage3_distill", "stage2_continual", "stage1_refine")


@dataclass
class Evaluable:
    """A model ready to score: `logits(ids [B, S]) -> [B, S, V]`, its tokenizer and how long a context it takes."""

    model: torch.nn.Module
    tokenizer: Any  # bitnet_train.data.tokenizer.Tokenizer
    kind: str
    path: Path
    max_length: int
    device: torch.device

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids.to(self.device))
        return (out.logits if hasattr(out, "logits") else out).float()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of equal-length prompts [B, S] -> [B, S + n], with the KV cache."""
        input_ids = input_ids.to(self.device)
        if self.kind == "transformers":
            return self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=self.tokenizer.eos_id, pad_token_id=self.tokenizer.pad_id)
        from bitnet_train.infer.generate import generate

        return generate(self.model, input_ids, max_new_tokens, eos_id=self.tokenizer.eos_id)


def _is_native(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == "bitnet_train.ternary"
    except Exception:  # not a safetensors file: let the checkpoint reader say what is wrong
        return False


def _folder_checkpoint(folder: Path) -> Path | None:
    for stage in (folder, *(folder / s for s in _STAGES)):
        if (stage / "student.ckpt").is_file():
            return stage / "student.ckpt"
        ckpts = stage / "checkpoints"
        if (ckpts / "last.ckpt").is_file():
            return ckpts / "last.ckpt"
        found = sorted(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if ckpts.is_dir() else []
        if found:
            return found[-1]
    return None


def source_kind(path: Path) -> tuple[str, Path]:
    """(kind, file or folder to load) of `path`, or ConfigError for a path of no known kind."""
    if not path.exists():
        raise ConfigError(f"source {path} does not exist; give a .ckpt, a native .safetensors export, a "
                          "transformers export folder or a run / distillation stage folder")
    if path.is_dir():
        if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
            return "transformers", path
        ckpt = _folder_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"source {path} is a folder of no known kind: neither a transformers export "
                              "(config.json + weights) nor a run or stage folder (checkpoints/*.ckpt, student.ckpt)")
        return "checkpoint", ckpt
    if path.suffix == ".safetensors" and _is_native(path):
        return "native", path
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin", ".safetensors"):
        return "checkpoint", path
    raise ConfigError(f"source {path} has suffix {path.suffix!r}, of no known kind: give a .ckpt/.pt checkpoint, "
                      "a native .safetensors export or a folder")


def _as_trained(model: torch.nn.Module, obj: Any, run_cfg: Any, quant_cfg: Any) -> None:
    """Set `model`'s lambdas, norm switches and activation stage to what its run had at the checkpoint's step."""
    from bitnet_train.config import ScheduleConfig, from_mapping
    from bitnet_train.lit.callbacks.step_plan import activation_stage_plan, phase_in_plan
    from bitnet_train.quant.convert import set_lambda

    set_lambda(model, quant_cfg.weight_lambda, quant_cfg.activation_lambda)
    run_cfg = run_cfg or {}
    schedule = from_mapping(ScheduleConfig, "schedule", run_cfg["schedule"]) if run_cfg.get("schedule") else None
    step = obj.get("global_step") if isinstance(obj, dict) else None
    total = (run_cfg.get("trainer") or {}).get("max_steps")
    staged = (schedule is not None and schedule.active) or quant_cfg.activation_schemes_at != 0
    if not staged:
        return
    if step is None or not total:
        warnings.warn("the checkpoint's run has a quantization schedule but its step or trainer.max_steps is "
                      "unknown; it is evaluated fully quantized", stacklevel=3)
        set_lambda(model, 1.0, 1.0)
        return
    for plan in (phase_in_plan(schedule, model, int(total)) if schedule is not None else None,
                 activation_stage_plan(quant_cfg, model, int(total))):
        if plan is not None:
            plan.apply(model, int(step))


def _load_checkpoint(path: Path, config: str | Path | None, tokenizer: str | Path | None):
    from bitnet_train.export import source as src
    from bitnet_train.data.tokenizer import load_tokenizer
    from bitnet_train.models.decoder import CausalLM
    from bitnet_train.quant.convert import quantize_model

    config = Path(config) if config is not None else None  # _find_run_config takes a Path
    obj = src._read_file(path)
    run_cfg, cfg_path = src._find_run_config(path, config)
    model_cfg, quant_cfg = src._settings(obj, run_cfg, cfg_path, path)
    if quant_cfg.enabled:  # the export's loader: the quantized decoder, checked against the file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = src.load_source(path, config, tokenizer)
        _as_trained(loaded.model, obj, run_cfg, quant_cfg)
        return loaded.model, loaded.tokenizer, model_cfg
    state = src._state_dict(obj, path)
    tok = load_tokenizer(src._tokenizer_path(tokenizer, run_cfg, cfg_path, path))
    model = CausalLM(model_cfg)
    quantize_model(model, quant_cfg)  # sets kv_bits, which does not depend on quant.enabled
    model.load_state_dict(state, strict=not model_cfg.tie_word_embeddings)
    return model.eval(), tok, model_cfg


def _load_transformers(folder: Path):
    from bitnet_train.data.tokenizer import _HF_TOKENIZER_FILES, HFTokenizer
    from transformers import AutoModelForCausalLM

    if not any((folder / name).is_file() for name in _HF_TOKENIZER_FILES):
        raise ConfigError(f"transformers export {folder} has no tokenizer files ({', '.join(_HF_TOKENIZER_FILES[:3])}, "
                          "...); re-export it, or copy the tokenizer the model was trained with into the folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    return model, HFTokenizer(folder), int(getattr(model.config, "max_position_embeddings", 2048))


def load_evaluable(path: str | Path, config: str | Path | None = None, tokenizer: str | Path | None = None,
                   device: str | torch.device = "cpu", max_length: int | None = None) -> Evaluable:
    """The model at `path` (see module docstring) on `device`, or ConfigError naming what is wrong."""
    kind, target = source_kind(Path(path).expanduser())
    if kind == "transformers":
        model, tok, limit = _load_transformers(target)
    elif kind == "native":
        from bitnet_train.infer.model import load_model

        model, tok, native = load_model(target, device="cpu")
        limit = native.model_cfg.max_position_embeddings
    else:
        model, tok, model_cfg = _load_checkpoint(target, config, tokenizer)
        limit = model_cfg.max_position_embeddings
    device = torch.device(device)
    return Evaluable(model.to(device).eval(), tok, kind, target, int(max_length or limit), device)


def describe(ev: Evaluable) -> dict[str, Any]:
    return {"source": str(ev.path), "kind": ev.kind, "max_length": ev.max_length,
            "tokenizer": getattr(ev.tokenizer, "name", type(ev.tokenizer).__name__)}


__all__ = ["Evaluable", "KINDS", "describe", "load_evaluable", "source_kind"]
