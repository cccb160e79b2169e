"""SpikeMonitor: per-step loss, gradient norms by group, lambdas, spike and transition events, in JSONL and loggers."""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from bitnet_train.lit.callbacks import SpikeMonitor, TransitionCallback
from bitnet_train.lit.callbacks.spike_monitor import param_group
from bitnet_train.quant import BitLinear
from bitnet_train.schedules.transitions import Transition

BUMP_STEP, BUMP = 30, 3.0


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 8)
        self.layers = nn.ModuleList([BitLinear(8, 8), BitLinear(8, 8)])
        self.lm_head = nn.Linear(8, 16)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.lm_head(x)


class _Module(L.LightningModule):
    """Cross-entropy on random tokens; the recorded loss gets +BUMP at one step (no effect on gradients)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Net()
        self.model.layers[0].set_lambda(0.5, 1.0)
        self.model.layers[1].set_lambda(0.0, 0.0)
        self.micro_losses: dict[int, list[float]] = {}
        self.total_norms: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        loss = F.cross_entropy(self.model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        if self.global_step == BUMP_STEP:
            loss = loss + BUMP
        self.micro_losses.setdefault(self.global_step, []).append(float(loss.detach()))
        return loss

    def on_before_optimizer_step(self, optimizer):
        norms = [p.grad.norm() for p in self.parameters() if p.grad is not None]
        self.total_norms[self.global_step] = float(torch.linalg.vector_norm(torch.stack(norms)))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    torch.manual_seed(0)
    data = TensorDataset(torch.randint(0, 16, (400, 9)))
    monitor = SpikeMonitor(path=str(tmp / "monitor.jsonl"), window=20, min_history=10, quant_stats_every_n_steps=5)
    module = _Module()
    trainer = L.Trainer(max_steps=50, accelerator="cpu", logger=CSVLogger(tmp, name="logs", version=""),
                        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accumulate_grad_batches=2,
                        callbacks=[TransitionCallback([Transition("quantize", 12)]), monitor])
    trainer.fit(module, DataLoader(data, batch_size=4))
    lines = [json.loads(line) for line in (tmp / "monitor.jsonl").read_text().splitlines()]
    return tmp, module, monitor, lines


def test_param_groups():
    assert param_group("model.model.layers.12.mlp.up_proj.weight") == "layers.12"
    assert param_group("model.model.embed_tokens.weight") == "embed"
    assert param_group("model.lm_head.weight") == "head"
    assert param_group("model.model.norm.weight") == "other"


def test_per_module_lambdas():
    from bitnet_train.config import ModelConfig, QuantConfig
    from bitnet_train.models import CausalLM
    from bitnet_train.quant import quantize_model

    holder = nn.Module()
    holder.model = CausalLM(ModelConfig(vocab_size=20, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2))
    quantize_model(holder.model, QuantConfig())
    holder.model.model.layers[1].mlp.down_proj.set_lambda(0.25, 0.5)
    grouped = SpikeMonitor._lambdas(holder)
    assert grouped["lambda/weight/layers.1"] == pytest.approx((6 + 0.25) / 7)
    assert not any("down_proj" in k for k in grouped)
    detailed = SpikeMonitor._lambdas(holder, per_module=True)
    assert detailed["lambda/weight/model.layers.1.mlp.down_proj"] == 0.25
    assert detailed["lambda/activation/model.layers.1.mlp.down_proj"] == 0.5
    assert detailed["lambda/weight/model.layers.0.mlp.down_proj"] == 1.0


def test_one_record_per_optimizer_step_with_mean_loss(run):
    _, module, _, lines = run
    records = [r for r in lines if "event" not in r]
    assert [r["step"] for r in records] == list(range(50))
    for r in records:
        micro = module.micro_losses[r["step"]]
        assert len(micro) == 2
        assert r["train/loss"] == pytest.approx(sum(micro) / 2, rel=1e-6)


def test_gradient_norms_global_and_by_group(run):
    _, module, _, lines = run
    for r in (x for x in lines if "event" not in x):
        assert r["grad_norm/total"] == pytest.approx(module.total_norms[r["step"]], rel=1e-5)
        groups = [r[f"grad_norm/{g}"] for g in ("embed", "layers.0", "layers.1", "head")]
        assert math.sqrt(sum(g * g for g in groups)) == pytest.approx(r["grad_norm/total"], rel=1e-5)


def test_lambdas_lr_and_quant_stats(run):
    _, _, _, lines = run
    records = [r for r in lines if "event" not in r]
    r = records[7]
    assert r["lambda/weight/layers.0"] == 0.5 and r["lambda/weight/layers.1"] == 0.0
    assert r["lambda/weight"] == 0.25 and r["lambda/activation"] == 0.5
    assert r["lr"] == pytest.approx(1e-2)
    with_stats = [x["step"] for x in records if "monitor/zero_frac" in x]
    assert with_stats == list(range(0, 50, 5))
    assert all(0 < x["monitor/zero_frac"] < 1 for x in records if "monitor/zero_frac" in x)
    assert "monitor/flip_frac" in records[5] and "monitor/flip_frac" not in records[0]


def test_spike_and_transition_events(run):
    tmp, _, monitor, lines = run
    assert lines[0]["event"] == "start"
    assert lines[0]["transitions"] == [{"name": "quantize", "step": 12, "optimizer": "retain"}]
    events = [(r["event"], r["step"]) for r in lines if "event" in r and r["event"] != "start"]
    assert ("transition", 12) in events
    spikes = [r for r in lines if r.get("event") == "spike"]
    assert [s["step"] for s in spikes] == [BUMP_STEP]
    assert spikes[0]["loss"] - spikes[0]["baseline"] == pytest.approx(BUMP, abs=0.5)
    ends = [r for r in lines if r.get("event") == "spike_end"]
    assert [(e["step"], e["recovery_steps"]) for e in ends] == [(BUMP_STEP, 5)]  # median of 5 post-peak steps
    by_step = {r["step"]: r for r in lines if "event" not in r}
    assert by_step[12]["transition"] == "quantize"
    assert by_step[BUMP_STEP]["spike/z"] > 6 and abs(by_step[BUMP_STEP - 1]["spike/z"]) < 6

    # the same values reached the configured logger, events on their own steps
    with open(tmp / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    onset = [r for r in rows if r.get("spike/onset")]
    assert [int(r["step"]) for r in onset] == [BUMP_STEP]
    assert [int(r["step"]) for r in rows if r.get("schedule/transition/quantize")] == [12]
    assert {int(r["step"]) for r in rows if r.get("grad_norm/layers.1")} == set(range(50))
    assert {int(r["step"]) for r in rows if r.get("lambda/weight")} == set(range(50))


def test_detector_state_survives_a_checkpoint(run):
    _, _, monitor, _ = run
    state = monitor.state_dict()
    again = SpikeMonitor(window=20, min_history=10)
    again.load_state_dict(state)
    assert list(again.detector._window) == list(monitor.detector._window)
    assert [s.onset for s in again.detector.spikes] == [BUMP_STEP]
    assert list(again.detector._recent) == list(monitor.detector._recent)
    assert again.detector.score(100.0) == monitor.detector.score(100.0)
