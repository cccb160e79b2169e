"""Train a small model with the real command line, export it with `python -m bitnet_train.export` to every
format, and generate with `python -m bitnet_train.generate` from the native export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import SMALL, run_cli

# hidden and FFN sizes that are multiples of 256, so that the GGUF export is possible too
SHAPE = ["model.hidden_size=256", "model.intermediate_size=512"]


def _py(module: str, *args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="default", TORCHDYNAMO_DISABLE="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_train_export_generate(tmp_path, data_cache):
    run = tmp_path / "run"
    proc = run_cli([*SMALL, *SHAPE, "debug=limit", "trainer.max_steps=8", f"hydra.run.dir={run}",
                    f"data.cache_dir={data_cache}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"

    # the tokenizer comes from the run's config beside the checkpoint (data.tokenizer=null: the shipped one)
    native = tmp_path / "model.safetensors"
    proc = _py("bitnet_train.export", str(ckpt), "--format", "native", "--out", str(native), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert native.is_file() and f"wrote {native}" in proc.stdout

    proc = _py("bitnet_train.export", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "m.gguf"),
               "--gguf-type", "tq1_0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GGUF ternary projections" in proc.stderr  # the size report

    proc = _py("bitnet_train.export", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BitNetForCausalLM"]

    proc = _py("bitnet_train.generate", str(native), "--prompt", "It is a truth universally", "--max-new-tokens", "12",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("It is a truth universally")  # (an 8-step model may well stop at EOS at once)

    # greedy generation from the export is greedy for the training-time model too: along the runtime's own
    # 12 new tokens both give the same logits to 0.05 (the integer runtime rounds once per output, the training
    # forward per product, so an activation sitting on a rounding boundary of the int8 quantizer can take the
    # neighbouring code: measured up to 9e-3 with 2 threads) and each chosen token is the training model's
    # argmax up to that tolerance (equal greedy strings would test near-ties, not the model)
    from bitnet_train.export.source import load_source
    from bitnet_train.infer.generate import generate
    from bitnet_train.infer.model import load_model

    src = load_source(ckpt)
    runtime, tok, _ = load_model(native)
    prompt = torch.tensor([tok.encode_batch(["It is a truth universally"])[0]])
    tokens = generate(runtime, prompt, 12)
    with torch.no_grad():
        ours, trained = runtime(tokens[:, :-1]).float(), src.model(tokens[:, :-1]).float()
    torch.testing.assert_close(ours, trained, rtol=0, atol=0.05)
    steps = trained[0, prompt.shape[1] - 1:]
    chosen = tokens[0, prompt.shape[1]:]
    assert torch.all(steps.gather(1, chosen[:, None])[:, 0] >= steps.max(-1).values - 0.05)


def test_export_errors_are_one_line(tmp_path):
    proc = _py("bitnet_train.export", str(tmp_path / "missing.ckpt"), "--format", "native", "--out",
               str(tmp_path / "x.safetensors"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: checkpoint") and "\n" not in proc.stderr.strip()
    proc = _py("bitnet_train.generate", str(tmp_path / "none.safetensors"), "--prompt", "x", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: native export")
