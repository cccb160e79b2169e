"""Shipped default corpus and tokenizer (see README.md here)."""
