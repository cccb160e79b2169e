"""A full-precision checkpoint (quant.enabled=false) exported with --format hf: transformers' own Llama /
Qwen3 class computes the same logits as our decoder, the folder carries tokenizer, generation config and a
model card that says full precision, and BitDistill's teacher loader reads it. The other formats refuse it
in one line naming --format hf."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bitnet_train.config import ConfigError
from bitnet_train.export.hf import write_hf
from bitnet_train.export.source import load_source
from exporttest_helpers import TOKENIZER, ids, save_checkpoint

FP = {"enabled": False}


@pytest.mark.parametrize("model", [dict(), dict(tie_word_embeddings=False), dict(qk_norm=True)],
                         ids=["llama-tied", "llama-untied", "qwen3"])
def test_transformers_runs_the_full_precision_export(tmp_path, model):
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    module = save_checkpoint(ckpt, model, FP, seed=4)
    src = load_source(ckpt, tokenizer=TOKENIZER, full_precision_ok=True)
    out = write_hf(src, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(hf.config, "quantization_config")
    x = ids(seed=2, shape=(2, 23))
    with torch.no_grad():
        theirs = hf(x).logits
        ours = module.model.eval()(x)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "full-precision" in card and "ternary" not in card
    assert (out / "generation_config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_distill_loads_the_export_as_teacher(tmp_path):
    from bitnet_train.distill.config import BitDistillConfig
    from bitnet_train.distill.teacher import load_teacher

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    module = save_checkpoint(ckpt, {}, FP, seed=1)
    out = write_hf(load_source(ckpt, tokenizer=TOKENIZER, full_precision_ok=True), tmp_path / "teacher")
    teacher = load_teacher(BitDistillConfig(teacher=str(out)))
    x = ids(seed=3, shape=(1, 17))
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(x).logits, module.model.eval()(x), rtol=0, atol=1e-5)


def test_other_formats_refuse_full_precision(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    save_checkpoint(ckpt, {}, FP)
    with pytest.raises(ConfigError, match="--format hf"):
        load_source(ckpt, tokenizer=TOKENIZER)
    proc = subprocess.run([sys.executable, "-m", "bitnet_train.export", str(ckpt), "--format", "native", "--out",
                           str(tmp_path / "m.safetensors"), "--tokenizer", str(TOKENIZER)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--format hf" in proc.stderr and "Traceback" not in proc.stderr
