"""Exporting trained checkpoints to packed ternary formats: native safetensors, transformers, GGUF."""
