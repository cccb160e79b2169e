"""A tiny random ternary checkpoint and its native and transformers exports, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))


@pytest.fixture(scope="session")
def sources(tmp_path_factory):
    """{"checkpoint", "native", "transformers", "run"} paths of one model (context 64).

    Built with TORCHDYNAMO_DISABLE=1 (transformers' torch.compile-decorated code would compile at import);
    the variable is restored afterwards, so that later tests' torch.compile is not silently a no-op."""
    import os

    before = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        from exporttest_helpers import TOKENIZER, save_checkpoint

        from bitnet_train.export.hf import write_hf
        from bitnet_train.export.native import write_native
        from bitnet_train.export.source import load_source

        root = tmp_path_factory.mktemp("evalsrc")
        ckpt = root / "run" / "checkpoints" / "last.ckpt"
        save_checkpoint(ckpt, dict(max_position_embeddings=64), {}, 0)
        (root / "run" / "config_resolved.yaml").write_text("data:\n  tokenizer: null\n")
        src = load_source(ckpt, tokenizer=TOKENIZER)
        return {"checkpoint": ckpt, "run": root / "run", "native": write_native(src, root / "m.safetensors"),
                "transformers": write_hf(src, root / "hf")}
    finally:
        if before is None:
            os.environ.pop("TORCHDYNAMO_DISABLE", None)
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = before
