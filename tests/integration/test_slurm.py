"""Real Slurm on this machine: the project's sbatch template and the Hydra submitit launcher.

A throw-away cluster (munged, slurmctld and two slurmd acting as two nodes;
tests/integration/slurm_local.py) is started for this module; Slurm is installed with apt-get when missing and the tests run as root, otherwise they
skip with the reason. Only CPU-specific settings are given on the sbatch / Hydra command lines
(no GPUs requested, CPU accelerator, a tiny model), exactly as a user overrides the templates.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMALL
from slurm_local import LocalSlurm, install

pytestmark = pytest.mark.slow
CPU = ["trainer.accelerator=cpu", *[o for o in SMALL if not o.startswith("data.batch_size")]]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the throw-away Slurm runs slurmctld and slurmd as root; these tests need root")
    reason = install()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2, nodes=2)  # two slurmd: two "nodes"
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(slurm):
    """A failed test's jobs must not hold the nodes for the next test."""
    yield
    slurm.cancel_all()


def _wait_for(predicate, timeout: float, what: str, slurm: LocalSlurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout:.0f} s\n{slurm.logs()}")


def _trained_steps(run_dir: Path) -> int:
    csv = run_dir / "logs" / "metrics.csv"
    if not csv.is_file():
        return 0
    lines = csv.read_text().splitlines()
    return max(0, len(lines) - 1)


def test_sbatch_template_two_tasks_requeued_on_preemption(slurm, data_cache, tmp_path):
    """2 tasks of launch/slurm/single_node.sbatch train DDP; SIGUSR1 mid-run makes Lightning write a
    requeue checkpoint and requeue the job, which resumes from it and finishes."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    max_steps = 60
    env = {"PYTHON": sys.executable, "TRAINER": "default", "RUN_DIR": str(run_dir), "PYTHONWARNINGS": "ignore"}
    job = slurm.sbatch(["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10",
                        "--job-name=bitnet-test", f"--output={out}", str(REPO / "launch/slurm/single_node.sbatch"),
                        *CPU, "data.batch_size=2", f"data.cache_dir={data_cache}", f"trainer.max_steps={max_steps}",
                        "trainer.val_check_interval=30", "callbacks.checkpoint.every_n_train_steps=30"],
                       env=env, cwd=REPO)
    # preempt once training runs: Slurm delivers SIGUSR1 to both tasks (as --signal=SIGUSR1@120 would)
    _wait_for(lambda: _trained_steps(run_dir) >= 5, 180, "training steps", slurm)
    slurm.run(["scancel", "--signal=USR1", str(job)])
    _wait_for(lambda: slurm.job_state(job)[0] == "PENDING", 60, "requeued job", slurm)
    assert list(run_dir.glob("hpc_ckpt_*.ckpt")), sorted(p.name for p in run_dir.iterdir())
    slurm.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])  # Slurm holds requeued jobs ~2 min
    state, code = slurm.wait_job(job, 240)
    log = out.read_text(errors="replace")
    assert (state, code) == ("COMPLETED", "0:0"), f"{state} {code}\n{log[-3000:]}\n{slurm.logs()}"

    assert "(restart 1)" in log, log[-2000:]
    assert "Restoring states from the checkpoint path at" in log and "hpc_ckpt_1.ckpt" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == max_steps
    assert metrics["tokens_seen"] == max_steps * 2 * 2 * 64  # steps x ranks x batch x seq_len: nothing lost or repeated
    assert metrics["resumed_from"].endswith("hpc_ckpt_1.ckpt")
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # consumed: later validation used the trained weights
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == max_steps
    assert (run_dir / "logs" / "metrics.csv").is_file()


def test_distillation_preempted_in_stage2_resumes_there(slurm, data_cache, tmp_path):
    """BitDistill under the sbatch template: SIGUSR1 during stage 2 checkpoints and ends the job in stage 2
    (stage 3 does not start in the preempted job); the requeued job resumes stage 2 from that checkpoint,
    finishes it and runs stage 3."""
    from distill_helpers import make_teacher

    from bitnet_train.paths import shipped_dir

    teacher = make_teacher(tmp_path / "teacher", "qwen2")
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    stage2_steps = 60
    env = {"PYTHON": sys.executable, "TRAINER": "default", "RUN_DIR": str(run_dir), "PYTHONWARNINGS": "ignore"}
    job = slurm.sbatch(["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=2", "--time=10",
                        "--job-name=bitnet-test-distill", f"--output={out}",
                        str(REPO / "launch/slurm/single_node.sbatch"), "+experiment=distill_tiny",
                        f"distill.teacher={teacher}", "trainer.accelerator=cpu", "callbacks.progress=null",
                        "trainer.enable_model_summary=false",
                        f"data.tokenizer={shipped_dir() / 'tokenizer' / 'austen_sp4096.model'}",
                        f"data.cache_dir={data_cache}", "data.seq_len=32", "data.batch_size=2", "data.max_val_blocks=4",
                        f"distill.stage2.tokens={stage2_steps * 2 * 32}", "distill.stage3.steps=4",
                        "distill.stage3.attention.layers=[-1]", "distill.stage3.attention.relation_heads=8",
                        "distill.eval_stages=false", "callbacks.checkpoint.every_n_train_steps=1000"],
                       env=env, cwd=REPO)
    stage2 = run_dir / "stage2_continual"
    _wait_for(lambda: _trained_steps(stage2) >= 5, 240, "stage-2 training steps", slurm)
    slurm.run(["scancel", "--signal=USR1", str(job)])
    _wait_for(lambda: slurm.job_state(job)[0] == "PENDING", 90, "requeued job", slurm)
    saved = list(stage2.glob("hpc_ckpt_*.ckpt"))
    assert saved, sorted(p.name for p in stage2.iterdir())
    preempted_at = torch.load(saved[0], map_location="cpu", weights_only=False)
    assert preempted_at["distill"]["stage"] == 2 and 0 < preempted_at["global_step"] < stage2_steps
    assert not (run_dir / "stage3_distill").exists() and not (run_dir / "metrics.json").exists()
    slurm.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
    state, code = slurm.wait_job(job, 300)
    log = out.read_text(errors="replace")
    assert (state, code) == ("COMPLETED", "0:0"), f"{state} {code}\n{log[-3000:]}\n{slurm.logs()}"
    assert "(restart 1)" in log and "stage 2/3 continual pre-training: steps 0..60" in log
    assert log.index("(restart 1)") < log.index("stage 3/3 distillation")  # stage 3 ran in the requeued job only
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("hpc_ckpt_1.ckpt")
    assert metrics["stage2"]["steps"] == stage2_steps and metrics["stage2"]["resumed_from"].endswith("hpc_ckpt_1.ckpt")
    assert metrics["stage2"]["tokens_seen"] == stage2_steps * 2 * 32  # nothing lost or repeated across the requeue
    assert metrics["stage3"]["steps"] == 4
    assert not list(stage2.glob("hpc_ckpt_*.ckpt"))  # consumed once stage 2 finished


def test_multi_node_template_trains_fsdp2_across_two_nodes(slurm, data_cache, tmp_path):
    """launch/slurm/multi_node.sbatch: 2 nodes x 1 task, FSDP2 sharded across the nodes."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    env = {"PYTHON": sys.executable, "TRAINER": "default", "RUN_DIR": str(run_dir), "PYTHONWARNINGS": "ignore"}
    job = slurm.sbatch(["--nodes=2", "--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10",
                        "--job-name=bitnet-test-multi", f"--output={out}",
                        str(REPO / "launch/slurm/multi_node.sbatch"), *CPU, "data.batch_size=2", "strategy=fsdp2",
                        f"data.cache_dir={data_cache}", "trainer.max_steps=4", "trainer.val_check_interval=2",
                        "callbacks.checkpoint.every_n_train_steps=2"], env=env, cwd=REPO)
    state, code = slurm.wait_job(job, 300)
    log = out.read_text(errors="replace")
    assert (state, code) == ("COMPLETED", "0:0"), f"{state} {code}\n{log[-3000:]}\n{slurm.logs()}"
    assert "2 nodes x 1 tasks" in log and "MEMBER: 2/2" in log
    assert slurm.run(["scontrol", "show", "job", str(job)]).stdout.count("NodeList=n[1-2]") >= 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["tokens_seen"] == 4 * 2 * 2 * 64  # two ranks, one per node
    assert (run_dir / "checkpoints" / "last.ckpt" / ".metadata").is_file()  # FSDP2 shards, one per node
    assert sorted(p.name for p in (run_dir / "checkpoints" / "last.ckpt").glob("*.distcp")) == ["__0_0.distcp",
                                                                                                "__1_0.distcp"]


def test_hydra_submitit_sweep(slurm, data_cache, tmp_path):
    """`-m hydra/launcher=slurm` (launch/hydra/launcher/slurm.yaml) runs one Slurm job per sweep point."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `distributed` extra installs it")
    sweep = tmp_path / "sweep"
    env = dict(slurm.env, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="1")
    cmd = [sys.executable, "-m", "bitnet_train", "--config-dir", str(REPO / "launch"), "-m", "hydra/launcher=slurm",
           "hydra.launcher.tasks_per_node=1", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", *CPU, "data.batch_size=4",
           f"data.cache_dir={data_cache}", "trainer.max_steps=6", "trainer.val_check_interval=3",
           "callbacks.checkpoint.every_n_train_steps=3", "ckpt_path=auto", "quant=b158,fp"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}\n{slurm.logs()}"
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 2, tasks  # one Slurm array task per sweep point
    quantized = {}
    for num in ("0", "1"):
        run = sweep / num
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == 6 and metrics["val_loss"] == metrics["val_loss"]  # finite
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "logs" / "metrics.csv").is_file()
        quantized[num] = metrics["quantized_linears"]
    assert sorted(quantized.values()) == [0, 14]  # the sweep's two points really differ (fp, b158)
