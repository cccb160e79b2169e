"""Continual 16 -> 1.58-bit runs end to end: the transition step, exact resume mid-ramp, init_from, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitnet_train.config import ConfigError
from bitnet_train.run import train
from conftest import SMALL, compose_config, run_cli

SCHEDULE = ["schedule.at=4", "schedule.weight.shape=linear", "schedule.weight.length=4",
            "schedule.activation.shape=linear", "schedule.activation.length=2", "schedule.optimizer=reset"]


def _records(out: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (out / "logs" / "monitor.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if "event" not in r}


def _run(out: Path, cache: Path, *extra: str) -> dict:
    cfg = compose_config([*SMALL, f"out_dir={out}", f"data.cache_dir={cache}", "trainer.max_steps=10",
                          "trainer.val_check_interval=5", "trainer.limit_val_batches=1",
                          "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1",
                          "callbacks.spike_monitor.min_history=3", "callbacks.spike_monitor.quant_stats_every_n_steps=2",
                          *SCHEDULE, *extra])
    return train(cfg)


@pytest.mark.slow
def test_transition_step_and_exact_resume_mid_ramp(tmp_path, data_cache):
    straight = tmp_path / "straight"
    metrics = _run(straight, data_cache)
    assert metrics["schedule"]["at"] == 4
    a = _records(straight)
    assert sorted(a) == list(range(10))
    # 16-bit before step 4, then the ramps: weights 1/4, 2/4, 3/4, 1; activations 1/2, 1
    assert [a[s]["lambda/weight"] for s in range(9)] == pytest.approx([0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1])
    assert [a[s]["lambda/activation"] for s in range(7)] == pytest.approx([0, 0, 0, 0, 0.5, 1, 1])
    assert a[4].get("transition") == "quantize" and all("transition" not in a[s] for s in a if s != 4)

    # resume at the transition (the reset must happen again) and in the middle of the ramp
    for step in (4, 6):
        resumed = tmp_path / f"resumed_{step}"
        ckpt = straight / "checkpoints" / f"step-{step:06d}.ckpt"
        assert ckpt.is_file(), sorted(p.name for p in (straight / "checkpoints").iterdir())
        metrics_b = _run(resumed, data_cache, f"ckpt_path={ckpt}")
        b = _records(resumed)
        assert sorted(b) == list(range(step, 10))
        for s in b:
            for key, value in a[s].items():
                if key != "monitor/flip_frac":  # flips count from the previous record, which a new process lacks
                    assert b[s][key] == value, f"resumed at {step}: step {s} {key} {b[s][key]} != {value}"
        assert metrics_b["val_loss"] == metrics["val_loss"]
        final_a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        final_b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)

    # not vacuous: retaining the optimizer state instead gives other losses after the transition
    retained = tmp_path / "retain"
    _run(retained, data_cache, "schedule.optimizer=retain")
    c = _records(retained)
    assert all(c[s]["train/loss"] == a[s]["train/loss"] for s in range(5))
    assert c[6]["train/loss"] != a[6]["train/loss"]


def test_init_from_hf_folder_in_process(tmp_path, data_cache, tiny_hf_llama):
    cfg = compose_config([*SMALL, "+experiment=finetune_extra_rmsnorm", f"init_from={tiny_hf_llama}",
                          f"out_dir={tmp_path}", f"data.cache_dir={data_cache}", "debug=fast_dev_run"])
    metrics = train(cfg)
    from transformers import AutoModelForCausalLM

    hf_params = AutoModelForCausalLM.from_pretrained(tiny_hf_llama).num_parameters()
    assert metrics["init_from"] == str(tiny_hf_llama) and metrics["quantized_linears"] == 14
    # the architecture is the HF model's, plus one new norm per quantized linear (all_linear):
    # per layer q, k, v, o, gate, up read 32 features and down_proj 64
    assert metrics["parameters"] == hf_params + 2 * (6 * 32 + 64)


def test_finetune_experiment_needs_init_from(tmp_path, data_cache):
    cfg = compose_config([*SMALL, "+experiment=finetune_extra_rmsnorm", f"out_dir={tmp_path}",
                          f"data.cache_dir={data_cache}", "debug=fast_dev_run"])
    with pytest.raises(ConfigError, match="set init_from=PATH"):
        train(cfg)


@pytest.mark.parametrize("args,match", [
    (["quant=fp", "schedule=continual"], r"quant\.enabled=false.*schedule=none"),
    (["schedule.at=500"], r"step 500 is not before the end of the run \(trainer\.max_steps=400\)"),
    (["schedule=phasein_linear", "quant.weight_lambda=0.5"], r"quant\.weight_lambda=0\.5.*leave them at 1"),
    (["schedule.weight.shape=linear"], r"schedule\.weight\.length=0"),
    (["schedule=layerwise_bottom_up", "schedule.layers.offset=190"], r"full quantization only at step 439.*max_steps=400"),
    (["callbacks.spike_monitor.threshold=0"], r"spike threshold=0 must be > 0"),
])
def test_bad_schedule(tmp_path, data_cache, args, match):
    cfg = compose_config([*SMALL, "debug=fast_dev_run", f"out_dir={tmp_path}", f"data.cache_dir={data_cache}", *args])
    with pytest.raises(ConfigError, match=match):
        train(cfg)


def test_cli_error_is_one_line(tmp_path, data_cache):
    proc = run_cli([*SMALL, "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={data_cache}",
                    "+experiment=finetune_extra_rmsnorm"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert "init_from=PATH" in line
