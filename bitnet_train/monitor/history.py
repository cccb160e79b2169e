"""Read a run's per-step history from the spike monitor's JSONL, Lightning's CSV log or a W&B run folder.

`load_history(path)` accepts a file (`*.jsonl`, `*.csv`, `*.wandb`) or a folder: a run's output
folder (read in this order: logs/monitor.jsonl, logs/metrics.csv, the newest wandb/*run-*/) or a
W&B run folder itself. The JSONL sink comes first because it has every step and the events; the
CSV holds what the loggers got (every `log_every_n_steps`); W&B keeps history only inside its
binary `run-<id>.wandb` log, online or offline, which is read with W&B's own reader
(`wandb leet inspect --json`, no network and no account needed).

Every reader gives the same metric names (those the spike monitor logs: train/loss, lr,
grad_norm/total, lambda/weight, ...), indexed by the 0-based optimizer step, and the transitions
that happened (step, name). A step written twice (a run resumed into the same folder) keeps the
later values.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_train.config import ConfigError

LOSS = "train/loss"
GRAD_NORM = "grad_norm/total"
LR = "lr"
LAMBDA_W = "lambda/weight"
LAMBDA_A = "lambda/activation"
TRANSITION_PREFIX = "schedule/transition/"
ACTION_EVENTS = ("mitigation", "nonfinite_skip")
_LR_FALLBACKS = ("lr-AdamW", "lr-AdamW/pg1")


@dataclass
class RunHistory:
    """Per-step metrics of one run."""

    name: str
    source: str
    records: dict[int, dict[str, float]] = field(default_factory=dict)
    transitions: list[tuple[int, str]] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    """Fault handling of the run (JSONL only): spike mitigations and skipped non-finite steps, in step order."""

    def add(self, step: int, values: dict[str, float]) -> None:
        row = self.records.setdefault(step, {})
        row.update(values)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric, steps ascending, only where it was recorded."""
        steps = sorted(s for s, row in self.records.items() if key in row)
        return steps, [self.records[s][key] for s in steps]

    def value_at(self, key: str, step: int) -> float | None:
        """The metric at `step`, or at the closest earlier step where it was recorded."""
        best = None
        for s in sorted(self.records):
            if s > step:
                break
            if key in self.records[s]:
                best = self.records[s][key]
        return best

    def _finish(self) -> "RunHistory":
        for row in self.records.values():
            if LR not in row:
                for key in _LR_FALLBACKS:
                    if key in row:
                        row[LR] = row[key]
                        break
        for step, row in self.records.items():
            for key in row:
                if key.startswith(TRANSITION_PREFIX):
                    self.transitions.append((step, key[len(TRANSITION_PREFIX):]))
        self.transitions = sorted(set(self.transitions))
        return self


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def read_jsonl(path: Path, name: str | None = None) -> RunHistory:
    history = RunHistory(name or _run_name(path), str(path))
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            if obj.get("event") in ACTION_EVENTS:
                history.actions.append(obj)
            elif obj.get("event") == "transition":
                history.add(int(obj["step"]), {TRANSITION_PREFIX + str(obj["name"]): 1.0})
            elif "event" not in obj and "step" in obj:
                values = {k: float(v) for k, v in obj.items() if k != "step" and _number(v) is not None}
                if LOSS in obj and obj[LOSS] is None:  # a non-finite loss, written as null (strict JSON)
                    values[LOSS] = math.nan
                history.add(int(obj["step"]), values)
    return history._finish()


def read_csv(path: Path, name: str | None = None) -> RunHistory:
    history = RunHistory(name or _run_name(path), str(path))
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = _number(row.get("step"))
            if step is None:
                continue
            values = {k: v for k, v in ((k, _number(v)) for k, v in row.items() if k != "step") if v is not None}
            if values:
                history.add(int(step), values)
    return history._finish()


def _wandb_command() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("wandb")
    if found:
        return [found]
    raise ConfigError("reading a W&B run needs the wandb command line (pip install wandb)")


def read_wandb(path: Path, name: str | None = None) -> RunHistory:
    """History of a W&B run from its .wandb log (a file or a run folder), through `wandb leet inspect --json`."""
    proc = subprocess.run([*_wandb_command(), "leet", "inspect", "--json", str(path)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"wandb could not read {path}: {first[:200]}")
    history = RunHistory(name or _run_name(path), str(path))
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") != "history":
            continue
        item = record.get("history", {}).get("item", {})
        step = _number(item.get("trainer/global_step", item.get("_step")))
        if step is None:
            continue
        values = {k: v for k, v in ((k, _number(v)) for k, v in item.items()) if v is not None and not k.startswith("_")}
        values.pop("trainer/global_step", None)
        history.add(int(step), values)
    return history._finish()


def _run_name(path: Path) -> str:
    """A readable name: the run folder (…/RUN/logs/monitor.jsonl -> RUN)."""
    parts = [p for p in path.resolve().parts]
    for skip in ("logs", "wandb"):
        if len(parts) > 2 and parts[-2] == skip:
            return parts[-3]
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name


def find_source(path: Path) -> tuple[str, Path]:
    """(kind, file or folder) of the best history under `path`: jsonl, csv or wandb."""
    if path.is_file():
        for suffix, kind in ((".jsonl", "jsonl"), (".csv", "csv"), (".wandb", "wandb")):
            if path.name.endswith(suffix):
                return kind, path
        raise ConfigError(f"{path} is not a .jsonl, .csv or .wandb history; give one of those or a run folder")
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist; give a run folder or a .jsonl/.csv/.wandb file")
    for rel, kind in (("logs/monitor.jsonl", "jsonl"), ("monitor.jsonl", "jsonl"), ("logs/metrics.csv", "csv"),
                      ("metrics.csv", "csv")):
        if (path / rel).is_file():
            return kind, path / rel
    if list(path.glob("run-*.wandb")):
        return "wandb", path
    runs = sorted(path.glob("wandb/*run-*"), key=lambda p: p.stat().st_mtime)
    if runs:
        return "wandb", runs[-1]
    raise ConfigError(f"{path} holds no run history (logs/monitor.jsonl, logs/metrics.csv or wandb/*run-*); "
                      "point at a run's output folder or at the file itself")


def load_history(path: str | Path, name: str | None = None, kind: str | None = None) -> RunHistory:
    """The history under `path`; `kind` (jsonl, csv, wandb) forces a reader for the file or folder given."""
    path = Path(path)
    found_kind, found = find_source(path) if kind is None else (kind, path)
    readers = {"jsonl": read_jsonl, "csv": read_csv, "wandb": read_wandb}
    if found_kind not in readers:
        raise ConfigError(f"history kind {found_kind!r} is not known; choose one of {', '.join(readers)}")
    history = readers[found_kind](found, name or (_run_name(path) if path.is_dir() else None))
    if not history.series(LOSS)[0]:
        raise ConfigError(f"{found} has no {LOSS} values")
    return history
