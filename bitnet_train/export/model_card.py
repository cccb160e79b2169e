"""The model card and generation config of the transformers export: what the Hub shows and loads.

README.md is a Hub model card (YAML metadata, then text) built with huggingface_hub's ModelCard:
library, pipeline, the architecture class, the quantization scheme (BitNet b1.58: ternary weights
with one absmean scale per matrix, 8-bit absmax activations per token), bits per weight (2 stored,
log2 3 = 1.58 of information), the tokens trained on, and evaluation results where the run's
metrics.json beside the checkpoint folder has them (validation loss and perplexity).
generation_config.json carries the tokenizer's special ids and greedy decoding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from bitnet_train.export.source import Source


def run_metrics(source: Source) -> dict[str, Any]:
    """The run's metrics.json (run/checkpoints/last.ckpt -> run/metrics.json), or {}."""
    path = source.checkpoint.parent.parent / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tokens_trained(source: Source, metrics: dict[str, Any]) -> int | None:
    if isinstance(metrics.get("tokens_seen"), int):
        return metrics["tokens_seen"]
    if source.checkpoint.suffix in (".ckpt", ".pt", ".pth"):
        obj = torch.load(source.checkpoint, map_location="cpu", weights_only=False, mmap=True)
        value = obj.get("tokens_seen") if isinstance(obj, dict) else None
        return int(value) if value is not None else None
    return None


def write_generation_config(source: Source, out: Path) -> None:
    from transformers import GenerationConfig

    tok = source.tokenizer
    GenerationConfig(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                     do_sample=False).save_pretrained(str(out))


def write_model_card(source: Source, out: Path, architecture: str) -> Path:
    from huggingface_hub import ModelCard, ModelCardData

    m, q = source.model_cfg, source.quant_cfg
    metrics = run_metrics(source)
    tokens = tokens_trained(source, metrics)
    evaluation = {k: metrics[k] for k in ("val_loss", "val_perplexity", "train_loss", "steps")
                  if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}
    if q.enabled:
        tags, kind = ["bitnet", "ternary", "1.58-bit"], "ternary language model (BitNet b1.58 quantization-aware training)"
        quantization = {"scheme": "BitNet b1.58", "weights": "ternary {-1, 0, 1} x one absmean scale per matrix",
                        "activations": "int8 absmax per token", "norm_placement": q.norm,
                        "bits_per_weight": 2.0, "bits_per_weight_information": round(math.log2(3), 3)}
        storage = ("Weights are stored packed, 2 bits per weight, with transformers' `bitnet` quantization "
                   "(`quant_method: bitnet`); load with `AutoModelForCausalLM.from_pretrained(folder)`.")
    else:
        tags, kind, quantization = ["full-precision"], "full-precision language model (no quantization)", None
        storage = ("Load with `AutoModelForCausalLM.from_pretrained(folder)`; it can be the teacher of BitDistill "
                   "(`distill.teacher=FOLDER`).")
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", tags=tags,
        architecture=architecture, quantization=quantization, tokens_trained=tokens,
        model_shape={"hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
                     "num_hidden_layers": m.num_hidden_layers, "num_attention_heads": m.num_attention_heads,
                     "num_key_value_heads": m.num_key_value_heads, "hidden_act": m.hidden_act,
                     "vocab_size": m.vocab_size},
        evaluation=evaluation or None)
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in evaluation.items()) or "| (none recorded) | |"
    text = "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# {source.checkpoint.parent.parent.name or source.checkpoint.stem}", "",
        f"A {architecture} {kind}: "
        f"{m.num_hidden_layers} layers, hidden size {m.hidden_size}, FFN {m.intermediate_size} ({m.hidden_act}), "
        f"vocabulary {m.vocab_size}; trained on {tokens:,} tokens." if tokens is not None else
        f"A {architecture} {kind}.", "",
        storage, "",
        "## Evaluation", "", "| metric | value |", "|---|---|", rows, ""])
    path = out / "README.md"
    ModelCard(text).save(str(path))
    return path
