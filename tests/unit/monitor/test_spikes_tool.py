"""tools/spikes.py: finds the spikes of several runs, prints the table (with lambda then), plots them overlaid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def _run(path, seed: int, bump_at: int | None, transition: int | None) -> None:
    """A monitor.jsonl with a falling noisy loss, a lambda ramp from `transition` and a decaying bump."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for s in range(300):
            loss = 3.0 + 2.0 * np.exp(-s / 80) + rng.normal(0, 0.03)
            if bump_at is not None and s >= bump_at:
                loss += 1.5 * np.exp(-(s - bump_at) / 10)
            lam = 0.0 if transition is None or s < transition else min((s - transition + 1) / 20, 1.0)
            if s == transition:
                f.write(json.dumps({"event": "transition", "step": s, "name": "quantize"}) + "\n")
            f.write(json.dumps({"step": s, "train/loss": loss, "grad_norm/total": 1 + rng.random(),
                                "lambda/weight": lam, "lambda/activation": lam}) + "\n")


def test_table_json_and_overlay_plot(tmp_path, capsys, load_tool):
    tool = load_tool("spikes")
    _run(tmp_path / "abrupt" / "logs" / "monitor.jsonl", 0, 150, 150)
    _run(tmp_path / "smooth" / "logs" / "monitor.jsonl", 1, None, None)
    png = tmp_path / "overlay.png"
    assert tool.main([str(tmp_path / "abrupt"), str(tmp_path / "smooth"), "--plot", str(png), "--zoom", "120", "220"]) == 0
    out = capsys.readouterr().out
    assert "abrupt: 300 steps" in out and "transitions: quantize at 150" in out and "transitions: none" in out
    table = [line.split() for line in out.splitlines() if line.startswith(("abrupt ", "smooth "))]
    assert len(table) == 1, out  # one spike, in the abrupt run
    run, step, peak, height, recover, z, lam_w, lam_a = table[0]
    assert (run, step, lam_w) == ("abrupt", "150", "0.05")
    assert float(height) == pytest.approx(1.5, abs=0.2) and 15 <= int(recover) <= 35
    image = Image.open(png)
    assert image.size == (900, 1100) and png.stat().st_size < 400_000  # with the zoomed loss panel on top

    assert tool.main([str(tmp_path / "abrupt"), "--label", "A", "--json", "--threshold", "100",
                      "--plot", str(tmp_path / "one.png")]) == 0
    assert Image.open(tmp_path / "one.png").size == (900, 800)
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["run"] == "A" and entry["spikes"] == [] and entry["transitions"] == [[150, "quantize"]]


def test_bad_input_is_one_line(tmp_path, capsys, load_tool):
    tool = load_tool("spikes")
    assert tool.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_mitigations_and_skipped_steps_are_listed(tmp_path, capsys, load_tool):
    tool = load_tool("spikes")
    log = tmp_path / "run" / "logs" / "monitor.jsonl"
    log.parent.mkdir(parents=True)
    lines = [{"event": "start", "step": 0, "mitigation": "rollback"}]
    lines += [{"step": s, "train/loss": 3.0 - 0.001 * s} for s in range(40)]
    lines.insert(31, {"event": "mitigation", "step": 30, "action": "rollback", "loss": 9.5, "z": 80.0,
                      "restored_step": 20, "skipped_steps": 11})
    lines.insert(12, {"event": "nonfinite_skip", "step": 11, "loss": None, "consecutive": 1})
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert tool.main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "step 11: nonfinite_skip loss=None, consecutive=1" in out
    assert "step 30: mitigation action=rollback, loss=9.5, z=80.0, restored_step=20, skipped_steps=11" in out
    assert tool.main([str(tmp_path / "run"), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert [(a["event"], a["step"]) for a in run["actions"]] == [("nonfinite_skip", 11), ("mitigation", 30)]
