"""Faults injected into training: NaN and huge losses under each policy and mitigation, resume across a rollback."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from faults_helpers import Poisoned, same, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from bitnet_train.config import ConfigError
from bitnet_train.lit.callbacks import NonFiniteGuard, SpikeMonitor
from bitnet_train.lit.checkpoint_io import AtomicCheckpointIO, NonFiniteTrainingError
from bitnet_train.strict_json import strict_json

SPIKE = 25  # after the monitor's min_history (20) steps


def _events(path, kind):
    return [e for e in map(json.loads, open(path)) if e.get("event") == kind]


def test_strict_json_has_no_nan_for_a_strict_parser():
    obj = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": (2, "x"), "d": torch.tensor(math.nan), "e": 0.5}
    text = json.dumps(strict_json(obj), allow_nan=False)

    def refuse(name):
        raise ValueError(name)
    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [1.0, None, None], "c": [2, "x"], "d": None, "e": 0.5}


def test_nan_step_stops_with_step_and_last_checkpoint_and_no_update(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_last=True)
    module = Poisoned({5: math.nan})
    t = trainer(tmp_path, [ckpt, NonFiniteGuard(policy="stop")], 10, plugins=[AtomicCheckpointIO()])
    with pytest.raises(NonFiniteTrainingError, match=r"step 5 .*last good checkpoint: .*last\.ckpt") as err:
        t.fit(module)
    assert "\n" not in str(err.value)
    assert t.global_step == 5
    assert same(module.before[5], {k: v.detach() for k, v in module.state_dict().items()})  # no update from step 5
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_nan_step_skipped_then_training_goes_on(tmp_path):
    module = Poisoned({5: math.nan})
    guard = NonFiniteGuard(policy="skip", max_consecutive_skips=2)
    t = trainer(tmp_path, [SpikeMonitor(path=str(tmp_path / "m.jsonl")), guard], 8)
    t.fit(module)
    assert t.global_step == 8 and guard.skipped == [5]
    assert same(module.before[5], module.before[6])  # nothing applied from the NaN step
    assert not same(module.before[6], module.before[7])  # the next steps train again
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert [e["step"] for e in _events(tmp_path / "m.jsonl", "nonfinite_skip")] == [5]
    for line in open(tmp_path / "m.jsonl"):  # strict JSON, the NaN loss as null
        json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def test_skip_gives_up_after_the_consecutive_limit(tmp_path):
    module = Poisoned({3: math.nan, 4: math.inf, 5: math.nan})
    t = trainer(tmp_path, [NonFiniteGuard(policy="skip", max_consecutive_skips=2)], 10)
    with pytest.raises(NonFiniteTrainingError, match=r"step 5 .*2 skipped step\(s\) in a row.*none written yet"):
        t.fit(module)


def test_checkpoint_io_refuses_non_finite_weights(tmp_path):
    state = {"state_dict": {"w": torch.tensor([1.0, math.nan])}}
    with pytest.raises(NonFiniteTrainingError, match="weight w is not finite"):
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="policy"):
        NonFiniteGuard(policy="ignore")
    with pytest.raises(ConfigError, match="max_consecutive_skips"):
        NonFiniteGuard(max_consecutive_skips=0)
    with pytest.raises(ConfigError, match="mitigation"):
        SpikeMonitor(mitigation="pray")


def test_spike_skip_applies_no_update_and_logs_everywhere(tmp_path):
    module = Poisoned({SPIKE: 1000.0})
    logger = CSVLogger(tmp_path, name="csv")
    t = trainer(tmp_path, [SpikeMonitor(path=str(tmp_path / "m.jsonl"), mitigation="skip")], SPIKE + 3, logger=logger)
    t.fit(module)
    assert same(module.before[SPIKE], module.before[SPIKE + 1])
    assert not same(module.before[SPIKE - 1], module.before[SPIKE])
    events = _events(tmp_path / "m.jsonl", "mitigation")
    assert [(e["step"], e["action"]) for e in events] == [(SPIKE, "skip")]
    logger.save()
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/*/metrics.csv")))))
    assert [int(r["step"]) for r in rows if r.get("spike/mitigation/skip")] == [SPIKE]


def test_rollback_restores_the_snapshot_and_skips_the_window(tmp_path):
    module = Poisoned({SPIKE: 1000.0})
    t = trainer(tmp_path, [SpikeMonitor(path=str(tmp_path / "m.jsonl"), mitigation="rollback", rollback_every=10)],
                SPIKE + 3)
    t.fit(module)
    # the weights after the spike step are those before step 20, the last snapshot
    assert same(module.before[20], module.before[SPIKE + 1])
    (event,) = _events(tmp_path / "m.jsonl", "mitigation")
    assert event["action"] == "rollback" and event["restored_step"] == 20 and event["skipped_steps"] == SPIKE - 20 + 1


def test_zclip_clips_the_spike_gradient(tmp_path):
    module = Poisoned({SPIKE: 1000.0})
    monitor = SpikeMonitor(path=str(tmp_path / "m.jsonl"), mitigation="zclip",
                           zclip={"warmup_steps": 5, "max_grad_norm": None})
    trainer(tmp_path, [monitor], SPIKE + 2).fit(module)
    events = _events(tmp_path / "m.jsonl", "mitigation")
    spike = [e for e in events if e["step"] == SPIKE]
    assert spike and spike[0]["action"] == "zclip" and spike[0]["clipped_to"] < spike[0]["grad_norm"] / 10


@pytest.mark.parametrize("mode", ["rollback", "zclip"])
def test_resume_across_a_mitigated_spike_is_exact(tmp_path, mode):
    def run(folder, max_steps, ckpt_path=None):
        module = Poisoned({SPIKE: 1000.0})
        ckpt = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, filename="s{step}")
        monitor = SpikeMonitor(path=str(folder / "m.jsonl"), mitigation=mode, rollback_every=10,
                               zclip={"warmup_steps": 5})
        trainer(folder, [ckpt, monitor], max_steps, plugins=[AtomicCheckpointIO()]).fit(module, ckpt_path=ckpt_path)
        return module

    straight = run(tmp_path / "a", SPIKE + 6)
    first = run(tmp_path / "b", 22)  # after the snapshot at step 20, before the spike
    resumed = run(tmp_path / "b", SPIKE + 6, ckpt_path=str(tmp_path / "b" / "sstep=22.ckpt"))
    assert {s: straight.losses[s] for s in range(22, SPIKE + 6)} == resumed.losses
    assert same(straight.state_dict(), resumed.state_dict())
    assert first.losses == {s: straight.losses[s] for s in range(22)}
    if mode == "rollback":
        assert [e["step"] for e in _events(tmp_path / "b" / "m.jsonl", "mitigation")] == [SPIKE]
