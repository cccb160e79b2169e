"""A throw-away single-machine Slurm cluster for tests: munged, slurmctld and one slurmd per node, as root.

Everything lives under one folder (config, munge key and socket, state, spool, logs) and listens on
free loopback ports, so it touches no system Slurm or munge setup. Clients reach it through
SLURM_CONF. `stop()` ends only the daemons this object started, by their pids.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "srun", "sinfo")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def missing_tools() -> list[str]:
    return [tool for tool in DAEMONS + CLIENTS if shutil.which(tool) is None
            and not Path(f"/usr/sbin/{tool}").exists()]


def install() -> str | None:
    """Install Slurm and munge with apt-get if missing; return why not, or None when ready."""
    if not missing_tools():
        return None
    if os.geteuid() != 0:
        return f"Slurm is not installed ({', '.join(missing_tools())} missing) and installing it needs root"
    if shutil.which("apt-get") is None:
        return "Slurm is not installed and this system has no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    for cmd in ([*apt, "update"], [*apt, "install", "-y", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            return f"could not install Slurm ({' '.join(cmd[:4])}... failed: {tail[0][:200]})"
    missing = missing_tools()
    return f"Slurm installed but {', '.join(missing)} still missing" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    """`nodes` nodes (n1, n2, ...: one slurmd each, all on 127.0.0.1) of `cpus` CPUs, one partition `debug`."""

    def __init__(self, root: Path, cpus: int = 2, nodes: int = 1) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self.nodes = [f"n{i + 1}" for i in range(nodes)]
        self._procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        # Node names n1, n2, ... do not resolve to addresses: jobs rendezvous on 127.0.0.1 (the sbatch
        # templates and Lightning take MASTER_ADDR from the environment when it is set).
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), MASTER_ADDR="127.0.0.1")

    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text("\n".join([
            "ClusterName=bitnettest",
            # job ids (and the sbatch templates' rendezvous ports derived from them) unlike any other test cluster's
            f"FirstJobId={random.randint(1000, 19000)}",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool' / '%n'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "KillWait=5",
            # several slurmd on one machine: one port each (Debian's Slurm is built with multiple-slurmd support)
            *[f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} CPUs={self.cpus} "
              f"RealMemory={mem_mb // len(self.nodes)} State=UNKNOWN" for node in self.nodes],
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen([_exe(name.split("-")[0]), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._procs[name] = proc

    def start(self, timeout: float = 60.0) -> None:
        self._write_config()
        r = self.root
        self._start("munged", ["--foreground", "--force", f"--key-file={r / 'munge.key'}",
                               f"--socket={r / 'munge.socket'}", f"--pid-file={r / 'munged.pid'}",
                               f"--log-file={r / 'log' / 'munged.log'}", f"--seed-file={r / 'munge.seed'}"])
        self._wait(lambda: (r / "munge.socket").exists(), timeout, "munged socket")
        self._start("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        for node in self.nodes:
            (r / "spool" / node).mkdir(parents=True, exist_ok=True)
            self._start(f"slurmd-{node}", ["-D", "-N", node, "-f", str(self.conf)])
        self._wait(self._nodes_idle, timeout, f"{len(self.nodes)} idle node(s)")

    def _nodes_idle(self) -> bool:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.logs()}")
        states = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False).stdout.split()
        return len(states) == len(self.nodes) and all(state == "idle" for state in states)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"local Slurm: no {what} after {timeout:.0f} s; {self.logs()}")

    def logs(self, lines: int = 15) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=60, **kw)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def sbatch(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> int:
        out = self.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job_state(self, job_id: int) -> tuple[str, str]:
        """(JobState, ExitCode) from scontrol."""
        text = self.run(["scontrol", "show", "job", str(job_id)]).stdout
        state = re.search(r"JobState=(\S+)", text)
        code = re.search(r"ExitCode=(\S+)", text)
        return (state.group(1) if state else "UNKNOWN", code.group(1) if code else "?")

    def wait_job(self, job_id: int, timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, code = self.job_state(job_id)
            if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"):
                return state, code
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout:.0f} s")

    def cancel_all(self, timeout: float = 30.0) -> None:
        """Cancel every job of this cluster and wait until the queue is empty."""
        self.run(["scancel", "--user=root"], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel this cluster's jobs, end its daemons (by pid, slurmd first), then any job process left.

        Job steps run under slurmstepd, which outlives slurmd by design; they are found by the
        SLURM_CONF of this cluster in their environment and ended by pid.
        """
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            self.cancel_all()
        for name in [*(f"slurmd-{node}" for node in self.nodes), "slurmctld", "munged"]:
            proc = self._procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _job_processes(self) -> list[int]:
        """Pids of live processes whose environment names this cluster's slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids
