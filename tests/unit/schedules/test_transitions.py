"""Optimizer-state policy at a transition: `reset` zeroes Adam's moments and step counters, `retain` keeps them."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bitnet_train.config import ConfigError
from bitnet_train.lit.callbacks import TransitionCallback
from bitnet_train.schedules.transitions import Transition, apply_policy, check_within_run, reset_optimizer_state


def _trained_adamw(steps: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(steps):
        model(torch.randn(4, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_reset_zeroes_moments_and_steps_and_acts_like_a_fresh_optimizer():
    model, opt = _trained_adamw()
    assert all(s["exp_avg"].abs().sum() > 0 and s["step"] == 3 for s in opt.state.values())
    fresh_model = copy.deepcopy(model)
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    assert reset_optimizer_state(opt) == 3 * len(opt.state)  # exp_avg, exp_avg_sq, step of each parameter
    for state in opt.state.values():
        assert state["step"] == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    x = torch.randn(4, 6)
    for m, o in ((model, opt), (fresh_model, fresh)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)  # the same update a newly built optimizer makes (bias correction included)


def test_retain_keeps_state():
    _, opt = _trained_adamw()
    before = {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state.items()}
    assert apply_policy("retain", [opt]) == 0
    for k, s in opt.state.items():
        assert all(torch.equal(v, before[k][n]) for n, v in s.items())


def test_transition_validation():
    with pytest.raises(ConfigError, match="optimizer='keep'"):
        Transition("quantize", 5, "keep")
    with pytest.raises(ConfigError, match=r"step 10 is not before the end of the run \(trainer.max_steps=10\)"):
        check_within_run([Transition("quantize", 10)], 10)
    check_within_run([Transition("quantize", 9)], 10)


class _Toy(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class _Probe(L.Callback):
    """Records Adam's state as the step's update sees it (after the transition callback ran)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state = trainer.optimizers[0].state.get(pl_module.net.weight)
        if state:
            self.seen[trainer.global_step] = (float(state["exp_avg"].abs().sum()), float(state["step"]))


@pytest.mark.parametrize("policy", ["retain", "reset"])
def test_callback_applies_policy_at_the_configured_step(policy, tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    probe = _Probe()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        accumulate_grad_batches=2,
                        callbacks=[TransitionCallback([Transition("quantize", 4, policy)]), probe])
    trainer.fit(_Toy(), DataLoader(data, batch_size=4))
    assert sorted(probe.seen) == [1, 2, 3, 4, 5]
    assert probe.seen[3][0] > 0 and probe.seen[3][1] == 3
    if policy == "reset":
        assert probe.seen[4] == (0.0, 0.0)      # zeroed right before step 4's update
        assert probe.seen[5][1] == 1.0           # and counting again from there
    else:
        assert probe.seen[4][0] > 0 and probe.seen[4][1] == 4
        assert probe.seen[5][1] == 5
