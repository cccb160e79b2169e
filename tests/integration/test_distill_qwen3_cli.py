"""`python -m bitnet_train +experiment=distill_qwen` end to end with a tiny random Qwen3 teacher (q/k norms),
the paper's teacher family: all three stages as a subprocess, relations taken after the q/k norms and RoPE."""

from __future__ import annotations

import json

import pytest

from bitnet_train.paths import shipped_dir
from conftest import run_cli
from distill_helpers import make_teacher


@pytest.mark.slow
def test_distill_qwen_with_a_qwen3_teacher_runs_three_stages(data_cache, tmp_path):
    teacher = make_teacher(tmp_path / "qwen3_teacher", "qwen3", seed=2)
    assert json.loads((teacher / "config.json").read_text())["model_type"] == "qwen3"
    out = tmp_path / "run"
    proc = run_cli(["+experiment=distill_qwen", f"distill.teacher={teacher}", "trainer=default",
                    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
                    "trainer.accumulate_grad_batches=1", "trainer.enable_model_summary=false",
                    f"data.tokenizer={shipped_dir() / 'tokenizer' / 'austen_sp4096.model'}",
                    f"data.cache_dir={data_cache}", "data.seq_len=32", "data.batch_size=2", "data.max_val_blocks=2",
                    "distill.stage2.tokens=128", "distill.stage3.steps=2", "distill.stage3.attention.layers=[-1]",
                    "distill.stage3.attention.relation_heads=8", "callbacks.progress=null",
                    f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage1"]["new_norms"] == 2 * 3
    assert metrics["stage3"]["steps"] == 2
    assert metrics["stage3"]["train_attn_kl"] > 0 and metrics["stage3"]["train_logit_kl"] > 0
