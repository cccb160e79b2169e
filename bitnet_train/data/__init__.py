"""Data path: tokenizers, document sources, packing into blocks, and the LightningDataModule."""

from bitnet_train.data.datamodule import CausalLMDataModule
from bitnet_train.data.tokenizer import Tokenizer, load_tokenizer

__all__ = ["CausalLMDataModule", "Tokenizer", "load_tokenizer"]
