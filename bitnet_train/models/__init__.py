"""The LLaMA/BitNet decoder and its mapping to transformers checkpoints."""

from bitnet_train.models.decoder import CausalLM

__all__ = ["CausalLM"]
