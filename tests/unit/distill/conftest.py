"""Tiny random transformers teachers saved to temporary folders (built from config classes, no downloads)."""

from __future__ import annotations

import pytest

from distill_helpers import make_teacher


@pytest.fixture(scope="module")
def qwen2_teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("qwen2_teacher"), "qwen2")


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("llama_teacher"), "llama", seed=1)
