"""`python -m bitnet_train +experiment=distill_tiny distill.teacher=PATH` runs the three stages and resumes.

The teacher is a tiny random Qwen2 saved to a temporary folder; the data is the shipped corpus with the
shipped tokenizer (the teacher's vocabulary is 4096). Resuming from the middle of stage 2, from the middle
of stage 3 and from the stage-1 file gives the same final student as the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bitnet_train.paths import shipped_dir
from bitnet_train.run import train
from conftest import compose_config, run_cli
from distill_helpers import make_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher"), "qwen2")


def _args(teacher: Path, cache: Path, out: Path) -> list[str]:
    return ["+experiment=distill_tiny", f"distill.teacher={teacher}",
            f"data.tokenizer={shipped_dir() / 'tokenizer' / 'austen_sp4096.model'}", f"data.cache_dir={cache}",
            "data.seq_len=32", "data.batch_size=2", "data.max_val_blocks=4",
            "distill.stage2.tokens=256",  # 4 steps of 2 x 32
            "distill.stage3.steps=4", "distill.stage3.attention.layers=[-1]",
            "distill.stage3.attention.relation_heads=8", "distill.stage3.logit_weight=1.0",
            "distill.stage3.attention_weight=10.0",
            "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1",
            "callbacks.quant_stats.every_n_steps=2", "trainer.enable_model_summary=false",
            f"hydra.run.dir={out}"]


def _in_process(args: list[str], out: Path, *extra: str) -> dict:
    overrides = [a for a in args if not a.startswith("hydra.run.dir=")]
    return train(compose_config([*overrides, f"out_dir={out}", "callbacks.progress=null", *extra]))


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "stage3_distill" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def _same_student(a: Path, b: Path) -> None:
    first, second = _final(a), _final(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.slow
def _evaluator_reads_the_stages(run: Path, out: Path) -> None:
    """The evaluator takes a distillation run folder as its latest stage and a stage folder as that stage's
    student, and scores the stage-3 student as the packed runtime scores its native export (the consumer's
    check; transformers' BitNet class cannot hold this Qwen2-shaped student, which has q/k/v biases)."""
    from bitnet_train.evaluate.perplexity import perplexity
    from bitnet_train.evaluate.sources import load_evaluable
    from bitnet_train.evaluate.sources import source_kind
    from bitnet_train.export.native import write_native
    from bitnet_train.export.source import load_source

    last3 = run / "stage3_distill" / "checkpoints" / "last.ckpt"
    assert source_kind(run) == ("checkpoint", last3)
    assert source_kind(run / "stage3_distill") == ("checkpoint", last3)
    assert source_kind(run / "stage1_refine") == ("checkpoint", run / "stage1_refine" / "student.ckpt")
    texts = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.",
             "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition."]
    ours = perplexity(load_evaluable(run), texts)
    theirs = perplexity(load_evaluable(write_native(load_source(last3), out)), texts)
    assert ours["tokens"] == theirs["tokens"]
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=2e-4)
    stage1 = perplexity(load_evaluable(run / "stage1_refine"), texts)
    assert abs(stage1["loss"] - ours["loss"]) > 1e-3  # a different student: stages 2 and 3 trained it


def test_three_stages_run_and_resume_from_any_stage(teacher, data_cache, tmp_path):
    straight = tmp_path / "straight"
    args = _args(teacher, data_cache, straight)
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "stage 1/3 modeling refinement" in log and "stage 2/3 continual pre-training" in log
    assert "stage 3/3 distillation" in log

    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["planned_steps"] == {"stage2": 4, "stage3": 4}
    assert metrics["stage2"]["steps"] == 4 and metrics["stage2"]["tokens_seen"] == 256
    assert metrics["stage3"]["steps"] == 4 and metrics["stage3"]["train_logit_kl"] > 0
    assert metrics["stage3"]["train_attn_kl"] > 0 and metrics["stage1"]["new_norms"] == 2 * 3
    for key in ("teacher_val", "student_val"):
        assert metrics[key]["perplexity"] > 1 and metrics[key]["tokens"] == 4 * 32
    assert metrics["student_val"] == metrics["stage3"]["val"]

    stage1 = torch.load(straight / "stage1_refine" / "student.ckpt", weights_only=False)
    assert stage1["distill"]["stage"] == 1
    for stage, folder in ((2, "stage2_continual"), (3, "stage3_distill")):
        names = sorted(p.name for p in (straight / folder / "checkpoints").iterdir())
        assert names == ["last.ckpt", "step-000002.ckpt", "step-000004.ckpt"], names
        tag = torch.load(straight / folder / "checkpoints" / "step-000002.ckpt", weights_only=False)["distill"]
        assert tag == {"stage": stage, "name": ("continual pre-training", "distillation")[stage - 2], "max_steps": 4}
    with open(straight / "stage3_distill" / "logs" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/ce")]
    assert len(rows) == 4 and all(row["stage"] == "3.0" for row in rows)
    for key in ("train/loss", "train/logit_kl", "train/attn_kl"):
        assert all(float(row[key]) > 0 for row in rows)
    assert float(rows[0]["train/loss"]) == pytest.approx(
        float(rows[0]["train/ce"]) + float(rows[0]["train/logit_kl"]) + 10.0 * float(rows[0]["train/attn_kl"]), rel=1e-4)

    _evaluator_reads_the_stages(straight, tmp_path / "stage3.safetensors")

    # resume in the middle of stage 2 (command line), then of stage 3, and from the stage-1 file
    mid2 = tmp_path / "from_stage2"
    proc = run_cli([*_args(teacher, data_cache, mid2),
                    f"ckpt_path={straight / 'stage2_continual' / 'checkpoints' / 'step-000002.ckpt'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed = json.loads((mid2 / "metrics.json").read_text())
    assert "skipped" in resumed["stage1"] and resumed["stage2"]["steps"] == 4 and resumed["stage3"]["steps"] == 4
    _same_student(straight, mid2)

    mid3 = tmp_path / "from_stage3"
    metrics3 = _in_process(args, mid3, f"ckpt_path={straight / 'stage3_distill' / 'checkpoints' / 'step-000002.ckpt'}")
    assert "stage2" not in metrics3 and metrics3["stage3"]["steps"] == 4
    assert not (mid3 / "stage2_continual").exists()
    _same_student(straight, mid3)

    from1 = tmp_path / "from_stage1"
    _in_process(args, from1, f"ckpt_path={straight / 'stage1_refine' / 'student.ckpt'}")
    _same_student(straight, from1)

    # ckpt_path=auto in a run folder that stopped after stage 2 continues with stage 3 from its last checkpoint
    import shutil

    auto = tmp_path / "auto"
    shutil.copytree(straight / "stage1_refine", auto / "stage1_refine")
    shutil.copytree(straight / "stage2_continual", auto / "stage2_continual")
    metrics_auto = _in_process(args, auto, "ckpt_path=auto")
    assert metrics_auto["resumed_from"] == str(auto / "stage2_continual" / "checkpoints" / "last.ckpt")
    _same_student(straight, auto)


def test_distill_without_teacher_fails_in_one_line(tmp_path):
    proc = run_cli(["+experiment=distill_qwen", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "distill.teacher is not set" in lines[0], proc.stderr[-2000:]


def test_bad_resume_checkpoint_is_refused(teacher, data_cache, tmp_path):
    """A pretraining checkpoint is not a distillation stage: refused before the teacher is loaded."""
    fake = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, fake)
    with pytest.raises(Exception, match="not a BitDistill stage checkpoint"):
        _in_process(_args(teacher, data_cache, tmp_path / "x"), tmp_path / "x", f"ckpt_path={fake}")


def test_prompt_answer_task_with_cached_teacher_logits(teacher, data_cache, tmp_path):
    """Stage 3 alone on prompt/answer records, padding-masked relations, teacher logits from the cache."""
    task = tmp_path / "task.jsonl"
    words = ["sense", "pride", "persuasion", "emma", "park", "abbey"]
    task.write_text("".join(json.dumps({"prompt": f"Which novel has the word {w} in its title? ",
                                        "answer": f"The one about {w}, number {i}."}) + "\n"
                            for i in range(40) for w in words[i % 6:i % 6 + 1]))
    out = tmp_path / "run"
    args = _args(teacher, data_cache, out)
    metrics = _in_process(args, out, "distill.stage2.tokens=0", f"distill.stage3.data.files={task}",
                          "distill.stage3.data.layout=prompt_answer", "data.val_fraction=0.2",
                          "distill.stage3.attention.padding_mask=true", "distill.stage3.attention.causal_mask=true",
                          "distill.stage3.logit_cache.enabled=true", "distill.stage3.logit_cache.top_k=8",
                          "distill.stage3.steps=3", "distill.eval_stages=false")
    assert metrics["stage2"] == {"skipped": "distill.stage2.tokens=0"} and "val" not in metrics["stage1"]
    assert metrics["stage3"]["steps"] == 3 and metrics["stage3"]["train_logit_kl"] > 0
    assert metrics["stage3"]["logit_cache"]["filled"] == 6  # 3 steps of 2 records
    assert metrics["data"]["train_documents"] + metrics["data"]["val_documents"] == 40
    assert 0 < metrics["student_val"]["tokens"] < 8 * 32  # answer tokens only


def test_schedule_phases_the_student_in_during_stage2(teacher, data_cache, tmp_path, monkeypatch):
    """schedule= drives the student's lambdas in stage 2 (16-bit -> ternary); stage 3 then trains it fully ternary."""
    seen = _spy_on_stages(monkeypatch, lambda layer: layer.weight_lambda)
    out = tmp_path / "run"
    args = _args(teacher, data_cache, out)
    _in_process(args, out, "schedule=phasein_linear", "schedule.at=0", "schedule.weight.length=3",
                "schedule.activation.length=3", "distill.stage3.steps=0", "distill.eval_stages=false",
                "distill.eval_teacher=false")
    assert [stage for stage, _ in seen] == ["2"] * 4
    lambdas = [value for _, value in seen]
    assert lambdas[0] < lambdas[1] < lambdas[2] == lambdas[3] == 1.0, lambdas  # a 3-step linear ramp


def _spy_on_stages(monkeypatch, read):
    """Record (stage, read(first q_proj)) at every training batch, after the step-plan callback has run."""
    import lightning as L

    from bitnet_train.tasks import trainer as run_trainer

    seen: list[tuple[str, object]] = []

    class Spy(L.Callback):  # runs after the step-plan callback in the same hook
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            layer = pl_module.model.model.layers[0].self_attn.q_proj
            seen.append((pl_module.stage_label[0], read(layer)))

    original = run_trainer.build_step_plan_callbacks
    monkeypatch.setattr(run_trainer, "build_step_plan_callbacks", lambda *a: [*original(*a), Spy()])
    return seen


def test_activation_schemes_at_switches_during_stage2(teacher, data_cache, tmp_path, monkeypatch):
    """quant.activation_schemes_at (a4.8's 8-bit-first training) takes effect in a distillation run: stage 2
    starts with 8-bit activations and switches to the a4.8 schemes at its step; stage 3 keeps the final schemes."""
    seen = _spy_on_stages(monkeypatch, lambda layer: (layer.activation_scheme, layer.scheme_active))
    out = tmp_path / "run"
    args = _args(teacher, data_cache, out)
    _in_process(args, out, "quant=a48", "quant.norm=${distill.norms}", "quant.activation_schemes_at=2",
                "distill.stage3.steps=2", "distill.eval_stages=false", "distill.eval_teacher=false")
    assert [stage for stage, _ in seen] == ["2"] * 4 + ["3"] * 2
    assert all(scheme == "int4_absmean" for _, (scheme, _) in seen)  # q_proj's a4.8 scheme
    assert [active for _, (_, active) in seen] == [False, False, True, True, True, True]


def test_slurm_requeue_signal_in_stage2_stops_there_and_the_requeued_run_resumes(teacher, data_cache, tmp_path,
                                                                                  monkeypatch):
    """Inside a Slurm job, the requeue signal during stage 2 checkpoints at a step boundary, asks Slurm to
    requeue and ends the run in stage 2 (stage 3 does not start, no metrics.json); the requeued run
    (ckpt_path=auto) resumes stage 2 from that checkpoint and ends with the uninterrupted run's student."""
    import os
    import signal

    import lightning as L

    from bitnet_train.lit.callbacks import slurm_requeue
    from bitnet_train.tasks import trainer as run_trainer

    straight = tmp_path / "straight"
    _in_process(_args(teacher, data_cache, straight), straight, "distill.eval_stages=false")

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "distill", "SLURM_JOB_ID": "77", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    requeued: list[list[str]] = []
    monkeypatch.setattr(slurm_requeue.subprocess, "run",
                        lambda cmd, **kw: requeued.append(cmd) or subprocess_result())

    class Preempt(L.Callback):  # Slurm's warning signal, delivered during stage 2's step 2
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if pl_module.stage_label.startswith("2/") and trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    original = run_trainer.build_step_plan_callbacks
    monkeypatch.setattr(run_trainer, "build_step_plan_callbacks", lambda *a: [*original(*a), Preempt()])
    out = tmp_path / "preempted"
    args = _args(teacher, data_cache, out)
    first = _in_process(args, out, "distill.eval_stages=false", "ckpt_path=auto")
    assert first == {"requeued": True} and requeued == [["scontrol", "requeue", "77"]]
    saved = torch.load(out / "stage2_continual" / "hpc_ckpt_1.ckpt", weights_only=False)
    assert saved["distill"]["stage"] == 2 and saved["global_step"] == 3  # the step boundary after the signal
    assert not (out / "stage3_distill").exists() and not (out / "metrics.json").exists()

    monkeypatch.setattr(run_trainer, "build_step_plan_callbacks", original)
    second = _in_process(args, out, "distill.eval_stages=false", "ckpt_path=auto")
    assert second["resumed_from"].endswith("hpc_ckpt_1.ckpt") and second["stage2"]["tokens_seen"] == 256
    assert second["stage3"]["steps"] == 4 and not list((out / "stage2_continual").glob("hpc_ckpt_*"))
    _same_student(straight, out)


def subprocess_result():
    import subprocess

    return subprocess.CompletedProcess(["scontrol"], 0, "", "")


def test_student_starts_from_student_init(teacher, data_cache, tmp_path):
    """distill.student_init: the stage-1 student holds that model's weights (the base the teacher was fine-tuned
    from, in the paper), not the teacher's; with calibrated norms the unquantized student computes that model."""
    from safetensors.torch import load_file

    from bitnet_train.models.hf import from_hf_state_dict

    base = make_teacher(tmp_path / "base", "qwen2", seed=7)
    out = tmp_path / "run"
    metrics = _in_process(_args(teacher, data_cache, out), out, f"distill.student_init={base}",
                          "distill.stage2.tokens=0", "distill.stage3.steps=1", "distill.eval_stages=false")
    assert metrics["stage1"]["weights_from"] == str(base) and metrics["stage1"]["new_norms"] > 0
    student = torch.load(out / "stage1_refine" / "student.ckpt", weights_only=False)["state_dict"]
    expected = from_hf_state_dict(load_file(base / "model.safetensors"))
    teacher_weights = from_hf_state_dict(load_file(teacher / "model.safetensors"))
    compared = 0
    for name, tensor in expected.items():
        if f"model.{name}" in student:
            assert torch.equal(student[f"model.{name}"], tensor), name
            assert not torch.equal(student[f"model.{name}"], teacher_weights[name]), name
            compared += 1
    assert compared == len(expected)


def test_distill_settings_that_do_not_fit(teacher, data_cache, tmp_path):
    from bitnet_train.config import ConfigError

    args = _args(teacher, data_cache, tmp_path / "x")
    with pytest.raises(ConfigError, match="distill.stage2.tokens=0"):
        _in_process(args, tmp_path / "x", "schedule=phasein_linear", "distill.stage2.tokens=0")
    with pytest.raises(ConfigError, match=r"quant\.activation_schemes_at=2 switches activation schemes during stage 2"):
        _in_process(args, tmp_path / "x", "quant=a48", "quant.norm=${distill.norms}", "quant.activation_schemes_at=2",
                    "distill.stage2.tokens=0")
    with pytest.raises(ConfigError, match="init_from does not apply"):
        _in_process(args, tmp_path / "x", f"init_from={teacher}")
    wider = make_teacher(tmp_path / "wider", "qwen2", intermediate_size=96)
    with pytest.raises(ConfigError, match=r"distill\.student_init=.* is not shaped like the teacher .*intermediate_size"):
        _in_process(args, tmp_path / "x", f"distill.student_init={wider}")
    with pytest.raises(ConfigError, match="needs distill.student=teacher"):
        _in_process(args, tmp_path / "x", f"distill.student_init={teacher}", "distill.student=config")
    with pytest.raises(ConfigError, match=r"distill\.student_init=.* does not exist"):
        _in_process(args, tmp_path / "x", f"distill.student_init={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"quant\.norm='all_linear' differs from distill\.norms='subln'"):
        _in_process(args, tmp_path / "x", "quant.norm=all_linear")
