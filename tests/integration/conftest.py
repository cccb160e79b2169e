"""Shared fixtures for end-to-end runs: composing the real config, shrunk for CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[2]

# A model and data shape that trains a step in well under a second on 2 CPU cores.
SMALL = [
    "model.hidden_size=64", "model.intermediate_size=160", "model.num_hidden_layers=2",
    "model.num_attention_heads=4", "model.num_key_value_heads=2",
    "data.seq_len=64", "data.batch_size=4", "data.max_val_blocks=8",
    "callbacks.progress=null", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
    "optim.warmup_steps=2",
]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenization cache for the session (the shipped corpus is tokenized once)."""
    return tmp_path_factory.mktemp("datasets_cache")


def compose_config(overrides: list[str]):
    with initialize_config_module("bitnet_train.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0", WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "bitnet_train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_hf_llama(tmp_path_factory) -> Path:
    """A tiny random transformers Llama folder (no tokenizer) whose vocabulary fits the shipped tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return path
