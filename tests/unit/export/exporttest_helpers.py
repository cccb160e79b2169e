"""Helpers for export tests: a PretrainModule with spread-out random weights, saved the way Lightning
saves it (state_dict + hyper_parameters), next to the shipped sentencepiece tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from bitnet_train.data.tokenizer import SHIPPED_TOKENIZER
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.paths import shipped_dir

TOKENIZER = shipped_dir() / SHIPPED_TOKENIZER
SMALL = dict(vocab_size=4096, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights N(0, s) with s in [0.05, 0.15] per tensor, norm weights U(0.5, 1.5), biases N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 + 0.1 * torch.rand((), generator=g)))


def save_checkpoint(path: Path, model: dict | None = None, quant: dict | None = None, seed: int = 0) -> PretrainModule:
    module = PretrainModule({**SMALL, **(model or {})}, quant or {}, {})
    randomize(module, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6"}, path)
    return module


def ids(seed: int = 0, shape=(2, 19)) -> torch.Tensor:
    return torch.randint(3, 4096, shape, generator=torch.Generator().manual_seed(seed))
