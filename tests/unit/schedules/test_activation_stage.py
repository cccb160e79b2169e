"""Two-stage activation training: 8-bit activations before quant.activation_schemes_at, the configured
schemes from that step on, with the optimizer-state policy of the transition machinery."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from bitnet_train.config import ConfigError, QuantConfig, to_dict
from bitnet_train.lit.callbacks.step_plan import StepPlanCallback, build_step_plan_callbacks
from bitnet_train.lit.callbacks.transitions import TransitionCallback
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.quant.convert import bitlinear_modules
from bitnet_train.schedules.activation_stage import ActivationStagePlan

A48 = {"q_proj": "int4_absmean", "k_proj": "int4_absmean", "v_proj": "int4_absmean", "o_proj": "int8_absmax_top50",
       "gate_proj": "int4_absmean", "up_proj": "int4_absmean"}
MODEL = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=32)


def test_plan_is_a_function_of_the_step():
    plan = ActivationStagePlan.build(QuantConfig(activation_schemes=A48, activation_schemes_at=0.95), 200)
    assert plan.step == 190 and plan.transition.name == "activations" and plan.transition.optimizer == "retain"
    assert [plan.schemes_active(s) for s in (0, 189, 190, 199)] == [False, False, True, True]
    assert ActivationStagePlan.build(QuantConfig(activation_schemes=A48, activation_schemes_at=7,
                                                 activation_schemes_optimizer="reset"), 10).step == 7


def test_builder():
    module = PretrainModule(MODEL, to_dict(QuantConfig(activation_schemes=A48)), {})
    assert build_step_plan_callbacks(None, QuantConfig(activation_schemes=A48), module.model, 10) == []
    cbs = build_step_plan_callbacks(None, QuantConfig(activation_schemes=A48, activation_schemes_at=0.5),
                                    module.model, 10)
    assert [type(c) for c in cbs] == [StepPlanCallback, TransitionCallback]
    assert [type(p) for p in cbs[0].plans] == [ActivationStagePlan] and cbs[1].transitions[0].step == 5
    with pytest.raises(ConfigError, match="not before the end of the run"):
        build_step_plan_callbacks(None, QuantConfig(activation_schemes=A48, activation_schemes_at=10), module.model, 10)


class _Probe(L.Callback):
    """Per step: the stage every BitLinear is in, and Adam's step counter, as the step's forward sees them."""

    def __init__(self) -> None:
        self.stage: dict[int, set[bool]] = {}
        self.adam_steps: dict[int, float] = {}
        self.val_stage: list[tuple[int, set[bool]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        self.stage[step] = {m.scheme_active for m in bitlinear_modules(pl_module.model).values()}
        state = trainer.optimizers[0].state.get(pl_module.model.model.layers[0].self_attn.q_proj.weight)
        self.adam_steps[step] = float(state["step"]) if state else 0.0

    def on_validation_start(self, trainer, pl_module):
        self.val_stage.append((trainer.global_step,
                               {m.scheme_active for m in bitlinear_modules(pl_module.model).values()}))


def _batches(n: int = 16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 61, (n, 17), generator=g)
    return [{"input_ids": x[:-1], "labels": x[1:]} for x in ids]


@pytest.mark.parametrize("policy", ["retain", "reset"])
def test_switch_happens_at_the_configured_step(policy, tmp_path):
    torch.manual_seed(0)
    quant = QuantConfig(activation_schemes=A48, activation_schemes_at=3, activation_schemes_optimizer=policy)
    module = PretrainModule(MODEL, to_dict(quant), {"warmup_steps": 1})
    probe = _Probe()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0,
                        callbacks=[*build_step_plan_callbacks(None, quant, module.model, 6), probe])
    trainer.fit(module, DataLoader(_batches(), batch_size=4), DataLoader(_batches(4), batch_size=4))
    assert probe.stage == {0: {False}, 1: {False}, 2: {False}, 3: {True}, 4: {True}, 5: {True}}
    assert probe.val_stage == [(2, {False}), (4, {True}), (6, {True})]
    if policy == "reset":
        assert probe.adam_steps[3] == 0.0 and probe.adam_steps[4] == 1.0  # zeroed right before step 3's update
    else:
        assert probe.adam_steps[3] == 3.0 and probe.adam_steps[4] == 4.0
