#!/usr/bin/env python
"""QAT step throughput: full precision vs BitNet b1.58 (bitnet_train) vs peer packages.

One measured step is a full training step on a random token batch (batch 8 x seq 256 = 2048
tokens, vocab 4096): forward, cross-entropy, backward, AdamW step, zero_grad. Variants:

  fp                 the decoder with plain nn.Linear layers
  fp_subln           fp plus the two sub-layer RMSNorms that `subln` adds (ablation)
  b158               quantize_model(model, QuantConfig())            (subln, the default)
  b158_nonorm        quantize_model(model, QuantConfig(norm="none")) (pure quantizer overhead)
  b158_fakequant     b158 with int_matmul="off" (the fake-quant forward)
  b158_unfused       b158 with its input norms outside the integer forward (fuse_input_norm=False)
  b158_torchops      b158 with fused_kernels="off" (its elementwise work as torch ops, not generated kernels)
  bitlinear*, onebitllms, torchao   peers' quantized linears on the same decoder (--peers)

each eager and under torch.compile (model + loss compiled; the first step, which compiles, is
reported separately and excluded from throughput).

Method. Each (size, variant, mode) lives in its own fresh worker subprocess: it builds the model,
runs the warmup steps (compiling if asked), then waits. The parent drives all workers of one
(size, mode) group round-robin, --steps steps per worker per round for --rounds rounds, rotating
the order each round, so that load from other processes on the machine falls on every variant
alike; only one worker computes at a time. Before each timed run the parent waits (up to
--quiet-wait s) for other processes to go quiet, and it measures how much CPU other processes
used during the run (/proc/stat minus the worker's own time); a run during which they used more
than --max-foreign-load CPUs is repeated (up to --retries times, within --patience s), and
medians use only clean rounds where there are any. Reported: median step time over all measured steps,
tokens/s from it, the ratio to the fp median of the same size and mode, the same ratio for
the median process CPU time per step (all threads; less sensitive to other processes than wall
time, a cross-check on a busy machine), and memory. Memory on CPU:
the worker's peak RSS (VmHWM) during the measured steps, after resetting the high-water mark
when warmup ends, and its increase over the RSS right after the model and optimizer were built
(params, grads, optimizer state, activations and allocator caching; for compiled variants also
what compilation left resident). With --exact-rss the workers run with glibc's mmap threshold fixed
(64 KiB), so that RSS follows the live tensors rather than the heap's cache of freed blocks (a
memory-only run: its step times are slowed by page faults). On CUDA: torch.cuda.max_memory_allocated.

  .venv/bin/python tools/bench_qat.py                      # full run (tiny and d512, peers)
  .venv/bin/python tools/bench_qat.py --sizes tiny --no-compile --no-peers --steps 3 --rounds 2
  .venv/bin/python tools/bench_qat.py --profile b158       # where the time goes, eager, tiny
  .venv/bin/python tools/bench_qat.py --profile b158 --profile-against torchao --sizes d512 --no-eager
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_peers  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688),
    "d512": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1376),
    # BitNet b1.58 2B4T's width (hidden 2560, FFN 6912, 20 heads of 128), two layers
    "w2560": dict(hidden_size=2560, num_hidden_layers=2, num_attention_heads=20, intermediate_size=6912),
}
OWN = ["fp", "fp_subln", "b158", "b158_nonorm", "b158_fakequant", "b158_unfused", "b158_torchops"]
PEERS = ["bitlinear", "bitlinear_absmean", "onebitllms", "torchao"]
VOCAB = 4096
EXACT_RSS_MMAP_THRESHOLD = 64 * 1024
"""--exact-rss: allocations from this size on are mmapped and unmapped when freed (glibc)."""
BATCH, SEQ = 8, 256


# =========================================================================== worker side

def _rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Runner:
    """One variant's model, optimizer and data; `step()` is one timed training step."""

    def __init__(self, size: str, variant: str, compile_: bool, device: str, threads: int, seed: int = 0):
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        from bitnet_train.config import ModelConfig
        from bitnet_train.models.decoder import CausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        cfg = ModelConfig(vocab_size=VOCAB, hidden_act="relu2", tie_word_embeddings=True, **SIZES[size])
        torch.manual_seed(seed)
        model = CausalLM(cfg).to(self.device)
        transform = _bench_peers.VARIANTS[variant][0]
        self.describe = transform(model)
        self.params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        self.model = model

        class WithLoss(nn.Module):
            def __init__(self, lm):
                super().__init__()
                self.lm = lm

            def forward(self, ids, labels):
                logits = self.lm(ids)
                return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

        self.step_fn = WithLoss(model)
        if compile_:
            self.step_fn = torch.compile(self.step_fn)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.1)
        g = torch.Generator().manual_seed(1234)
        data = torch.randint(0, VOCAB, (4, BATCH, SEQ + 1), generator=g).to(self.device)
        self.batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
        self.i = 0
        self.last_loss = float("nan")

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def step(self) -> float:
        ids, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        loss = self.step_fn(ids, labels)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        dt = time.perf_counter() - t0
        self.last_cpu = time.process_time() - c0
        self.last_loss = loss.detach()
        return dt

    def memory(self) -> dict:
        if self.device.type == "cuda":
            return {"peak_mib": self.torch.cuda.max_memory_allocated() / 2**20}
        rss, hwm = _rss_kib()
        return {"rss_mib": rss / 1024, "peak_mib": hwm / 1024}

    def reset_peak(self) -> bool:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()
            return True
        return _reset_hwm()


def worker_main(spec: dict) -> None:
    # The protocol uses the original stdout; anything a library prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        if spec.get("code_kernel"):
            from bitnet_train.quant import code_matmul
            code_matmul.set_cpu_kernel(spec["code_kernel"])
        runner = Runner(spec["size"], spec["variant"], spec["compile"], spec["device"], spec["threads"])
        base = runner.memory()
        if runner.device.type == "cuda":
            base["alloc_mib"] = runner.torch.cuda.memory_allocated() / 2**20
        first = runner.step()
        warm = [runner.step() for _ in range(max(spec["warmup"] - 1, 0))]
        loss = float(runner.last_loss)
        if loss != loss:  # NaN
            raise RuntimeError("loss is NaN after warmup")
        graph_breaks = None
        if spec["compile"]:
            from torch._dynamo.utils import counters
            graph_breaks = sum(counters["graph_break"].values())
        reset_ok = runner.reset_peak()
    except _bench_peers.Unavailable as err:
        send({"event": "unavailable", "reason": str(err)})
        return
    except Exception as err:  # noqa: BLE001 - report any failure as a reason, never crash the run
        msg = str(err).strip().splitlines()
        send({"event": "unavailable", "reason": f"{type(err).__name__}: {msg[0] if msg else ''}"[:400]})
        return
    send({"event": "ready", "describe": runner.describe, "params": runner.params, "first_step_s": first,
          "warmup_s": warm, "base_memory": base, "loss_after_warmup": loss, "graph_breaks": graph_breaks,
          "peak_reset": reset_ok})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            times, cpu = [], []
            for _ in range(cmd["steps"]):
                times.append(runner.step())
                cpu.append(runner.last_cpu)
            send({"event": "times", "times": times, "cpu": cpu, "loss": float(runner.last_loss),
                  "memory": runner.memory()})
        except Exception as err:  # noqa: BLE001
            send({"event": "failed", "reason": f"{type(err).__name__}: {err}"[:400]})
            return


# =========================================================================== parent side

class Worker:
    def __init__(self, spec: dict, log_dir: Path):
        self.spec = spec
        self.key = f"{spec['size']}/{spec['variant']}/{'compiled' if spec['compile'] else 'eager'}"
        self.log_path = log_dir / (self.key.replace("/", "_") + ".log")
        self.log = open(self.log_path, "w")
        env = dict(os.environ)
        if spec.get("exact_rss"):
            # a fixed threshold also turns off glibc's dynamic one, which otherwise rises to 32 MiB and
            # serves freed activations again from the heap, where they stay resident
            env["MALLOC_MMAP_THRESHOLD_"] = str(EXACT_RSS_MMAP_THRESHOLD)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1, cwd=str(ROOT), env=env)

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return {"event": "unavailable",
                    "reason": f"worker exited with code {self.proc.returncode}: " + " | ".join(tail)[-400:]}
        return json.loads(line)

    def send(self, obj: dict) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpu_busy_ticks() -> int:
    """Busy clock ticks of the whole machine so far (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


def _proc_ticks(pid: int) -> int:
    """utime + stime of process `pid` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


_TICK = os.sysconf("SC_CLK_TCK")


def _foreign_load(busy0: int, busy1: int, own: int, wall: float) -> float:
    """CPUs' worth of work done by other processes during `wall` seconds (0 = machine was ours)."""
    return max(busy1 - busy0 - own, 0) / _TICK / max(wall, 1e-9)


def _wait_quiet(args) -> float:
    """Wait (at most --quiet-wait s) until other processes use under half a core; return the last load."""
    deadline = time.time() + args.quiet_wait
    while True:
        b0, t0 = _cpu_busy_ticks(), time.time()
        time.sleep(0.3)
        load = _foreign_load(b0, _cpu_busy_ticks(), 0, time.time() - t0)
        if load < 0.5 or time.time() > deadline:
            return load


def run_group(size: str, mode: str, variants: list[str], args, log_dir: Path) -> list[dict]:
    """Set up --replicas workers per variant (one at a time), then time them round-robin; a variant's
    replicas pool their steps (its first replica's setup figures and its last measured memory are kept)."""
    results, live = [], []
    for variant in variants:
        spec = {"size": size, "variant": variant, "compile": mode == "compiled", "device": args.device,
                "threads": args.threads, "warmup": args.warmup, "exact_rss": args.exact_rss,
                "code_kernel": args.code_kernel}
        res = {"size": size, "mode": mode, "variant": variant, "label": _bench_peers.VARIANTS[variant][2],
               "peer": _bench_peers.VARIANTS[variant][1], "replicas": 0}
        for replica in range(args.replicas):
            tag = f"{size} {mode} {variant}" + (f" #{replica + 1}" if args.replicas > 1 else "")
            _log(f"[setup] {tag} ...")
            w = Worker(spec, log_dir)
            msg = w.recv()
            if msg["event"] != "ready":
                res["unavailable"] = msg["reason"]
                _log(f"[setup] {tag}: unavailable: {msg['reason']}")
                w.close()
                break
            if not res["replicas"]:
                res.update({k: msg[k] for k in ("describe", "params", "first_step_s", "warmup_s", "base_memory",
                                                 "loss_after_warmup", "graph_breaks", "peak_reset")})
                res["rounds"], res["memory"] = [], None
            res["replicas"] += 1
            live.append((w, res))
            _log(f"[setup] {tag}: first step {msg['first_step_s']:.1f} s")
        if "unavailable" in res:  # a variant is measured with all its replicas or not at all
            for w, _ in [entry for entry in live if entry[1] is res]:
                w.close()
            live = [entry for entry in live if entry[1] is not res]
        results.append(res)
    measured = [res for res in results if "unavailable" not in res]
    for r in range(args.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for w, res in order:
            if "failed" in res:
                continue
            for attempt in range(args.retries + 1):
                on_linux = os.path.exists("/proc/stat")
                patient = time.time() < args.patience_deadline
                if on_linux and patient:
                    _wait_quiet(args)
                if on_linux:
                    b0, p0, t0 = _cpu_busy_ticks(), _proc_ticks(w.proc.pid), time.time()
                w.send({"cmd": "run", "steps": args.steps})
                msg = w.recv()
                if msg["event"] != "times":
                    break
                foreign = (_foreign_load(b0, _cpu_busy_ticks(), _proc_ticks(w.proc.pid) - p0, time.time() - t0)
                           if on_linux else 0.0)
                res.setdefault("foreign_load", []).append(round(foreign, 3))
                if foreign <= args.max_foreign_load:
                    break
                res["contended_runs"] = res.get("contended_runs", 0) + 1
                retry = attempt < args.retries and patient
                _log(f"  {res['variant']}: other processes used {foreign:.2f} CPUs during the run; "
                     + ("retrying" if retry else "keeping it"))
                if not retry:
                    break
            if msg["event"] != "times":
                res["failed"] = msg.get("reason", "?")
                continue
            res["rounds"].append(msg["times"])
            res.setdefault("cpu_rounds", []).append(msg["cpu"])
            res.setdefault("round_clean", []).append(foreign <= args.max_foreign_load)
            res["final_loss"], res["memory"] = msg["loss"], msg["memory"]
        done = [f"{res['variant']}={statistics.median(res['rounds'][-1]) * 1e3:.0f}ms"
                for res in measured if res.get("rounds")]
        _log(f"[round {r + 1}/{args.rounds}] {size} {mode}: " + " ".join(done))
    for w, _ in live:
        w.close()
    for res in measured:
        rounds = res.get("rounds", [])
        clean = [rnd for rnd, ok in zip(rounds, res.get("round_clean", [])) if ok]
        res["rounds_used"] = "clean" if clean else "all (every round was contended)"
        wall = [t for rnd in (clean or rounds) for t in rnd]
        cpu = [t for rnd in res.get("cpu_rounds", []) for t in rnd]
        if wall:
            res["wall_s_median"] = statistics.median(wall)
            res["cpu_s_median"] = statistics.median(cpu)
        times = cpu if args.metric == "cpu" else wall
        if times:
            res["step_s_median"] = statistics.median(times)
            res["step_s_round_medians"] = [statistics.median(rnd) for rnd in res["rounds"]]
            q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
            res["step_s_p25"], res["step_s_p75"] = q[0], q[2]
            res["tokens_per_s"] = BATCH * SEQ / res["step_s_median"]
            mem = res["memory"] or {}
            res["peak_mib"] = mem.get("peak_mib")
            base = res["base_memory"]
            res["peak_increase_mib"] = (mem["peak_mib"] - base.get("rss_mib", base.get("alloc_mib", 0.0))
                                        if mem.get("peak_mib") is not None else None)
    fp = next((x for x in results if x["variant"] == "fp" and "step_s_median" in x), None)
    for res in results:
        if fp and "step_s_median" in res:
            res["ratio_vs_fp"] = res["step_s_median"] / fp["step_s_median"]
            res["wall_ratio_vs_fp"] = res["wall_s_median"] / fp["wall_s_median"]
            res["cpu_ratio_vs_fp"] = res["cpu_s_median"] / fp["cpu_s_median"]
    return results


def machine_info(args) -> dict:
    import torch

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from bitnet_train.quant import code_matmul

    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    int8_flags = sorted(f for f in flags if "vnni" in f or f.startswith("amx"))
    if args.code_kernel:
        code_matmul.set_cpu_kernel(args.code_kernel)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_int8_flags": int8_flags,
            "cpu_code_kernel": code_matmul.cpu_kernel(),
            "cores": len(os.sched_getaffinity(0)), "threads": args.threads, "device": args.device,
            "platform": platform.platform()}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    for dist in ("bitlinear", "onebitllms", "torchao", "triton"):
        try:
            from importlib.metadata import version
            info[dist] = version(dist)
        except Exception:  # noqa: BLE001
            info[dist] = None
    return info


def fmt_table(results: list[dict], device: str, metric: str = "wall") -> str:
    mem = "peak alloc MiB" if device == "cuda" else "peak RSS MiB (+ over build)"
    step = "step ms" if metric == "wall" else "CPU ms/step"
    other = "x FP (CPU time)" if metric == "wall" else "x FP (wall time)"
    lines = [f"| size | mode | variant | {step} (p25-p75) | tokens/s | x FP | {other} | first step s | {mem} "
             "| clean rounds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r['size']} | {r['mode']} | {r['variant']} |"
        if "step_s_median" not in r:
            why = r.get("unavailable") or r.get("failed") or "no result"
            lines.append(f"{head} n/a: {why.replace('|', '/')} | | | | | | |")
            continue
        ratio = f"{r['ratio_vs_fp']:.3f}" if "ratio_vs_fp" in r else "-"
        okey = "cpu_ratio_vs_fp" if metric == "wall" else "wall_ratio_vs_fp"
        cratio = f"{r[okey]:.3f}" if okey in r else "-"
        if r.get("peak_mib") is None:
            m = "-"
        elif device == "cuda":
            m = f"{r['peak_mib']:.0f}"
        else:
            m = f"{r['peak_mib']:.0f} (+{r['peak_increase_mib']:.0f})"
        lines.append(f"{head} {r['step_s_median'] * 1e3:.0f} ({r['step_s_p25'] * 1e3:.0f}-{r['step_s_p75'] * 1e3:.0f})"
                     f" | {r['tokens_per_s']:.0f} | {ratio} | {cratio} | {r['first_step_s']:.1f} | {m} |"
                     f" {sum(r.get('round_clean', []))}/{len(r.get('rounds', []))} |")
    return "\n".join(lines)


# =========================================================================== profile

def profile(args) -> None:
    """Per-op self CPU time of training steps: the baseline (--profile-against, default fp) vs the given
    variant, first size; eager, or compiled with --no-eager (then the generated code shows as one entry per
    compiled graph, and the forward scopes are not labelled)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile, record_function

    import bitnet_train.quant.functional as qf
    from bitnet_train.quant.norm import RMSNorm

    size = args.sizes[0]
    steps = max(args.steps, 3)
    compiled = args.no_eager
    mode = "compiled" if compiled else "eager"
    baseline = args.profile_against
    # Label the quantizers' and the extra norms' forward work (monkeypatched in this process only).
    fw, fa = qf._fake_quant_weight, qf._fake_quant_activation

    def wq(*a, **k):
        with record_function("## quant_weight (fwd)"):
            return fw(*a, **k)

    def aq(*a, **k):
        with record_function("## quant_activation (fwd)"):
            return fa(*a, **k)

    if not compiled:
        qf._fake_quant_weight, qf._fake_quant_activation = wq, aq
    variants = list(dict.fromkeys([baseline, args.profile]))
    runners = {}
    for variant in variants:
        runner = Runner(size, variant, compiled, args.device, args.threads)
        for name, m in runner.model.named_modules() if not compiled else ():
            norm = getattr(m, "input_norm", None)
            if isinstance(norm, RMSNorm) or (isinstance(m, torch.nn.Sequential) and isinstance(m[0], RMSNorm)):
                target = norm if norm is not None else m[0]
                orig = target.forward

                def fwd(x, _orig=orig):
                    with record_function("## extra RMSNorm (fwd)"):
                        return _orig(x)
                target.forward = fwd
        for _ in range(args.warmup):
            runner.step()
        runners[variant] = runner
    # Profile single steps, alternating variants; drop steps during which other processes used the CPU.
    out = {v: {"ops": {}, "scopes": {}, "times": [], "dropped": 0} for v in variants}
    tables = {}
    pid = os.getpid()
    for _ in range(steps * (args.retries + 2)):
        if all(len(out[v]["times"]) >= steps for v in variants):
            break
        for v in variants:
            if len(out[v]["times"]) >= steps:
                continue
            _wait_quiet(args)
            b0, p0, t0 = _cpu_busy_ticks(), _proc_ticks(pid), time.time()
            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                dt = runners[v].step()
            wall = time.time() - t0
            if _foreign_load(b0, _cpu_busy_ticks(), _proc_ticks(pid) - p0, wall) > args.max_foreign_load:
                out[v]["dropped"] += 1
                continue
            out[v]["times"].append(dt)
            ka = prof.key_averages()
            tables[v] = ka
            for e in ka:
                name, key = e.key, "scopes" if e.key.startswith("## ") else "ops"
                if name.startswith("## Call CompiledFxGraph"):  # the generated code's own time, graphs pooled
                    name, key = "compiled graphs' generated code", "ops"
                val = e.cpu_time_total if key == "scopes" else e.self_cpu_time_total
                out[v][key][name] = out[v][key].get(name, 0.0) + val / 1e3
    for v in variants:
        n = max(len(out[v]["times"]), 1)
        for key in ("ops", "scopes"):
            out[v][key] = {k: t / n for k, t in out[v][key].items()}
        out[v]["step_ms"] = statistics.median(out[v]["times"]) * 1e3 if out[v]["times"] else float("nan")
        print(f"\n=== {size} {v} {mode}: {out[v]['step_ms']:.0f} ms/step under the profiler, median of "
              f"{len(out[v]['times'])} clean steps ({out[v]['dropped']} contended steps dropped); last step:")
        if v in tables:
            print(tables[v].table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    base, var = out[baseline], out[args.profile]
    print(f"\n=== self CPU ms per step, {args.profile} minus {baseline} ({mode}, {size}); top differences")
    keys = set(base["ops"]) | set(var["ops"])
    diff = sorted(((var["ops"].get(k, 0) - base["ops"].get(k, 0), k) for k in keys if not k.startswith("## ")),
                  reverse=True)
    print(f"{'op':60s} {baseline:>8s} {args.profile:>10s} {'diff':>8s}")
    half = max(args.profile_rows // 2, 1)
    shown = diff if len(diff) <= 2 * half else diff[:half] + [row for row in diff[-half:] if row[0] < 0]
    for d, k in shown:  # the largest increases, then the largest decreases
        print(f"{k[:60]:60s} {base['ops'].get(k, 0):8.2f} {var['ops'].get(k, 0):10.2f} {d:+8.2f}")
    total = sum(var["ops"].values()) - sum(base["ops"].values())
    print(f"{'total self CPU':60s} {sum(base['ops'].values()):8.2f} {sum(var['ops'].values()):10.2f} {total:+8.2f}")
    print("\nforward scopes (inclusive ms per step):")
    for k, v in var["scopes"].items():
        print(f"  {k:40s} {v:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


# =========================================================================== main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="measured steps per variant per round (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps first, compile included (default 3)")
    p.add_argument("--rounds", type=int, default=10, help="round-robin rounds (default 10)")
    p.add_argument("--replicas", type=int, default=1,
                   help="worker processes per variant, timed in turn and pooled (default 1): step times of the "
                        "same code differ by several percent between processes, which more replicas average")
    p.add_argument("--sizes", default="tiny,d512", help=f"comma list of {', '.join(SIZES)} (default tiny,d512)")
    p.add_argument("--variants", default=None,
                   help=f"comma list of own variants to run (default all: {', '.join(OWN)}); fp is always included")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--no-eager", action="store_true", help="compiled only")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also measure the peers ({', '.join(PEERS)}) (default on)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch.set_num_threads in every worker (default: all cores)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default cuda if available, else cpu")
    p.add_argument("--retries", type=int, default=3,
                   help="re-run a worker's round when other processes used more than --max-foreign-load CPUs "
                        "during it (default 3)")
    p.add_argument("--max-foreign-load", type=float, default=0.15,
                   help="CPUs' worth of other processes' work tolerated during a timed run (default 0.15)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each timed run, wait up to this many seconds for the machine to be quiet")
    p.add_argument("--patience", type=float, default=600.0,
                   help="seconds after the start during which runs wait for quiet and retry contended rounds; "
                        "after that every run is kept as measured (flagged in the JSON) (default 600)")
    p.add_argument("--metric", default="wall", choices=["wall", "cpu"],
                   help="what the step-time and tokens/s columns use: wall-clock time (default), or the process "
                        "CPU time per step (with --threads 1, nearly immune to other processes on a shared "
                        "machine, and then equal to the wall time a quiet machine would show)")
    p.add_argument("--exact-rss", action="store_true",
                   help="start the workers with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), "
                        "so that a freed tensor leaves the resident set at once and peak RSS follows the live "
                        "tensors instead of what the allocator keeps cached; every large allocation then "
                        "faults in fresh pages, so the step times of such a run are not comparable with a "
                        "default run's (use it for the memory column)")
    p.add_argument("--code-kernel", default=None, choices=["int_mm", "fbgemm", "float"],
                   help="fix the CPU kernel of the integer forward's code product in every worker "
                        "(bitnet_train/quant/code_matmul.py; default: each process measures and keeps the fastest)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the raw numbers here")
    p.add_argument("--profile", default=None, metavar="VARIANT",
                   help="instead of the benchmark: torch.profiler of steps of fp (or --profile-against) and VARIANT "
                        "on the first size; eager, or compiled with --no-eager")
    p.add_argument("--profile-against", default="fp", metavar="VARIANT", help="the baseline of --profile (default fp)")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--table-from", default=None, metavar="JSON",
                   help="print the table of an earlier --json file and exit")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.table_from is not None:
        saved = json.loads(Path(args.table_from).read_text())
        print(fmt_table(saved["results"], saved["args"]["device"], saved["args"].get("metric", "wall")))
        return 0

    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return 0
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in args.sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    if args.profile is not None:
        if args.profile not in _bench_peers.VARIANTS:
            p.error(f"unknown variant {args.profile!r}; choose from {', '.join(_bench_peers.VARIANTS)}")
        if args.profile_against not in _bench_peers.VARIANTS:
            p.error(f"unknown variant {args.profile_against!r} for --profile-against; choose from "
                    f"{', '.join(_bench_peers.VARIANTS)}")
        profile(args)
        return 0
    own = OWN if args.variants is None else ["fp"] + [v for v in args.variants.split(",") if v and v != "fp"]
    for v in own:
        if v not in _bench_peers.VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(_bench_peers.VARIANTS)}")
    variants = own + (PEERS if args.peers else [])
    modes = [m for m, off in (("eager", args.no_eager), ("compiled", args.no_compile)) if not off]
    if not modes:
        p.error("--no-compile and --no-eager leave nothing to measure")
    if args.replicas < 1:
        p.error("--replicas must be at least 1")

    args.patience_deadline = time.time() + args.patience
    info = machine_info(args)
    _log(f"machine: {info}")
    results = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_qat_") as tmp:
        for size in args.sizes:
            for mode in modes:
                results += run_group(size, mode, variants, args, Path(tmp))
                if args.json:  # after every group, so that an interrupted run keeps what it measured
                    _write_json(args, info, results)
    table = fmt_table(results, args.device, args.metric)
    exact = (f"; --exact-rss (MALLOC_MMAP_THRESHOLD_={EXACT_RSS_MMAP_THRESHOLD}: RSS follows the live tensors, "
             "step times slowed by page faults)" if args.exact_rss and args.device == "cpu" else "")
    print(f"\nQAT step throughput: batch {BATCH} x seq {SEQ} = {BATCH * SEQ} tokens/step, vocab {VOCAB}, "
          f"{args.threads} threads, {args.device}, torch {info['torch']}; "
          f"{args.rounds} rounds x {args.steps} steps"
          + (f" x {args.replicas} worker processes per variant" if args.replicas > 1 else "")
          + f", medians of {args.metric} time{exact}")
    print(f"CPU: {info['cpu']} ({info['cpu_capability']}; int8 dot-product flags: "
          f"{', '.join(info['cpu_int8_flags']) or 'none'}); integer forward's code product on CPU: "
          f"{info['cpu_code_kernel']}{' (fixed by --code-kernel)' if args.code_kernel else ' (measured fastest)'}\n")
    print(table)
    notes = [r for r in results if "describe" in r]
    print("\nvariants:")
    for v in dict.fromkeys(r["variant"] for r in results):
        r = next((x for x in results if x["variant"] == v and "describe" in x), None)
        print(f"  {v:18s} {r['describe'] if r else next(x for x in results if x['variant'] == v).get('unavailable')}")
    gb = {f"{r['size']}/{r['variant']}": r["graph_breaks"] for r in notes if r.get("graph_breaks")}
    if gb:
        print(f"graph breaks under torch.compile: {gb}")
    print(f"(total {time.time() - t0:.0f} s)")
    if args.json:
        _write_json(args, info, results)
    return 0


def _write_json(args, info: dict, results: list[dict]) -> None:
    skip = ("worker", "patience_deadline")
    Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in skip},
                                           "machine": info, "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
