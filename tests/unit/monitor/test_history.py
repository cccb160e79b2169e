"""Run histories read the same from the monitor's JSONL, Lightning's CSV and an offline W&B run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnet_train.config import ConfigError
from bitnet_train.monitor.history import find_source, load_history

ROWS = [{"step": s, "train/loss": 5.0 - 0.01 * s, "grad_norm/total": 1.0 + 0.1 * s, "lambda/weight": min(s / 10, 1.0)}
        for s in range(30)]


def _write_jsonl(path: Path, rows=ROWS, transition=12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({"event": "start", "step": 0, "transitions": []}) + "\n")
        for row in rows:
            if row["step"] == transition:
                f.write(json.dumps({"event": "transition", "step": transition, "name": "quantize"}) + "\n")
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 30, "train/lo')  # cut short by a killed run
    return path


def _write_csv(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["epoch", "grad_norm/total", "lambda/weight", "lr-AdamW", "schedule/transition/quantize", "step",
            "train/loss"]
    lines = [",".join(keys)]
    for row in ROWS:
        lines.append(f"0,{row['grad_norm/total']},{row['lambda/weight']},0.001,,{row['step']},{row['train/loss']}")
        if row["step"] == 12:
            lines.append(",,,,1.0,12,")
    path.write_text("\n".join(lines) + "\n")
    return path


def _check(history, name):
    steps, loss = history.series("train/loss")
    assert steps == list(range(30)) and loss == pytest.approx([r["train/loss"] for r in ROWS])
    assert history.series("grad_norm/total")[1][3] == pytest.approx(1.3)
    assert history.value_at("lambda/weight", 4) == pytest.approx(0.4)
    assert history.transitions == [(12, "quantize")]
    assert history.name == name


def test_jsonl(tmp_path):
    run = tmp_path / "runA"
    _write_jsonl(run / "logs" / "monitor.jsonl")
    _check(load_history(run), "runA")
    _check(load_history(run / "logs" / "monitor.jsonl", name="x"), "x")


def test_csv_and_lr_fallback(tmp_path):
    run = tmp_path / "runB"
    _write_csv(run / "logs" / "metrics.csv")
    history = load_history(run)
    _check(history, "runB")
    assert history.value_at("lr", 5) == pytest.approx(0.001)


def test_jsonl_is_preferred_and_source_can_be_forced(tmp_path):
    run = tmp_path / "runC"
    _write_jsonl(run / "logs" / "monitor.jsonl")
    _write_csv(run / "logs" / "metrics.csv")
    assert find_source(run) == ("jsonl", run / "logs" / "monitor.jsonl")
    assert load_history(run / "logs" / "metrics.csv").source.endswith("metrics.csv")


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_history(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run history"):
        load_history(tmp_path / "empty")
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    with pytest.raises(ConfigError, match=r"not a \.jsonl"):
        load_history(bad)


def test_offline_wandb_run_folder(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = wandb.init(project="bitnet_train_test", dir=str(tmp_path), config={"schedule": {"optimizer": "reset"}})
    for row in ROWS:
        metrics = {k: v for k, v in row.items() if k != "step"}
        run.log({**metrics, "trainer/global_step": row["step"]})
        if row["step"] == 12:
            run.log({"schedule/transition/quantize": 1.0, "trainer/global_step": 12})
    run.finish()
    folders = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and list(folders[0].glob("run-*.wandb"))
    _check(load_history(folders[0]), tmp_path.name)  # named after the run's output folder
    # a run's output folder with only W&B inside is found too
    assert find_source(tmp_path) == ("wandb", folders[0])


def test_a_null_loss_in_the_jsonl_is_a_non_finite_step(tmp_path):
    import json
    import math

    from bitnet_train.monitor.history import load_history

    path = tmp_path / "monitor.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 0, "train/loss": 2.0}, {"step": 1, "train/loss": None}]))
    steps, losses = load_history(path).series("train/loss")
    assert steps == [0, 1] and losses[0] == 2.0 and math.isnan(losses[1])
