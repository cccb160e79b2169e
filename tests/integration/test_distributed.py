"""2-process DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo) against one process.

For each strategy, through the CLI (`python -m bitnet_train trainer.devices=2 strategy=...`):
  - each of 2 ranks takes batch B, the reference one process 2B: the same global batches, so the
    BitNet model's losses, validation loss and logged ternary scales agree to fp tolerance
    (gradient clipping at trainer.gradient_clip_val for every strategy, DeepSpeed's included);
  - a run resumed from the strategy's own step-2 checkpoint repeats steps 3-4 exactly;
  - ZeRO-3 with optimizer and parameter offload matches too (first steps only);
  - the final checkpoint consolidates to one Lightning checkpoint that PretrainModule loads with the
    reference's weights and logits, and (ZeRO-3's) exports to transformers' BitNetForCausalLM with
    the same logits.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitnet_train.lit.run_checkpoints import checkpoint_kind, consolidate
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.run import train
from conftest import REPO, SMALL, compose_config

pytestmark = pytest.mark.slow
# The relu^2 FFN (BitNet b1.58's), unit sub-norm gains and lr 1.5e-3: with the SiLU default, FSDP2's final
# weights differ from one process's by ~1e-4 after 4 steps, enough to flip ternary codes (logits then differ
# by ~1.5e-2), and with the newer defaults (gains 0.05, lr 3e-3) FSDP2 and both ZeRO stages exceed the
# tolerances below; not yet understood, so the parity is checked where it was established. The fake-quant
# forward (quant.int_matmul=off) for the same reason: the integer forward runs under every strategy
# (test_ternary_gather.py checks it layer by layer under FSDP2), but with it FSDP2 and ZeRO-2 reach step 4
# 3.4e-5 apart from one process (validation loss 8.4e-5) where the fake-quant forward stays at 3.5e-7
# (4.4e-6). Both agree to 1.2e-7 with either forward once gradient clipping is off: the sharded strategies
# sum the gradient norm in another order, the clip factor moves by an ulp, and here that carries an
# activation or weight code across a rounding boundary in the integer forward's run (a smaller 2-process
# probe did the same to the fake-quant forward and not the integer one). DDP stays within 3.5e-7 either way.
# (Measured with this file's two CLI runs, BASE with quant.int_matmul=auto or off, with and without
# trainer.gradient_clip_val=null, train/loss of metrics.csv and metrics.json's val_loss compared.)
BASE = [o for o in SMALL if not o.startswith("data.batch_size")] + [
    "model.hidden_act=relu2", "quant.norm_gain_init=1.0", "optim.lr=1.5e-3", "quant.int_matmul=off",
    "trainer.max_steps=4", "trainer.val_check_interval=2", "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.checkpoint.save_top_k=-1", "callbacks.quant_stats.every_n_steps=2"]
KIND = {"ddp": "file", "fsdp2": "fsdp2", "deepspeed_zero2": "deepspeed", "deepspeed_zero3": "deepspeed"}
# each case: (strategy, its extra settings); fsdp2_codes all-gathers ternary codes (parallel/ternary_gather.py)
CASES = {name: (name, []) for name in KIND} | {"fsdp2_codes": ("fsdp2", ["strategy.gather=codes"])}
# Final weights and logits after 4 steps, every strategy. Element by element they drift further apart than
# the losses, for two reasons. Where an element's gradient is near 0 in both runs (rows of the tied embedding
# for tokens absent from the batches), another reduction order can give it the other sign, and AdamW's
# normalized step then moves it by about lr (1.5e-3) the other way: measured 1.9e-3 on the embedding for
# deepspeed_zero2 and zero3, 0.22% of all elements beyond TOL. And an int8 activation code on a rounding
# boundary takes its neighbour: fsdp2's weights stay within 6e-6 of one process's, its logits move by up to
# 2.3e-3 (zero2/zero3: 2.6e-2, mean 2.2e-3). fsdp2_codes also takes each scale as a sum of shard sums (up to
# 1 ulp from one process's mean). A consolidation that put any shard in the wrong place would be off by the
# weights themselves (~5e-2) nearly everywhere. So: every weight within FINAL_ATOL, at most FINAL_FRACTION of
# the elements beyond TOL, logits within LOGIT_ATOL and on average within LOGIT_MEAN.
FINAL_ATOL, FINAL_FRACTION, LOGIT_ATOL, LOGIT_MEAN = 5e-3, 0.01, 5e-2, 5e-3
TOL = dict(rtol=2e-5, atol=2e-5)


def _log(out: Path, column: str) -> dict[int, float]:
    with open(out / "logs" / "metrics.csv") as f:
        return {int(row["step"]): float(row[column]) for row in csv.DictReader(f) if row.get(column)}


def _two_processes(strategy: str, out: Path, cache: Path, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="offline", HYDRA_FULL_ERROR="1")
    cmd = [sys.executable, "-m", "bitnet_train", *BASE, "trainer.accelerator=cpu", "trainer.devices=2",
           f"strategy={strategy}", "data.batch_size=2", f"data.cache_dir={cache}", f"hydra.run.dir={out}", *extra]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{strategy} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_cache):
    """One process with the global batch (4 = 2 ranks x 2)."""
    out = tmp_path_factory.mktemp("one_process")
    metrics = train(compose_config([*BASE, "data.batch_size=4", f"data.cache_dir={data_cache}", f"out_dir={out}"]))
    return out, metrics


def _ids() -> torch.Tensor:
    return torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0))


def _logits(module: PretrainModule) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(_ids())


def _export_logits(consolidated: Path, tmp: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of transformers' BitNetForCausalLM (online b1.58) holding the consolidated weights, and ours."""
    from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM

    from bitnet_train.models.hf import to_hf_state_dict

    module = PretrainModule.load_from_checkpoint(consolidated, map_location="cpu", weights_only=False)
    m = module.model_cfg
    config = BitNetConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                          num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                          num_key_value_heads=m.num_key_value_heads, rms_norm_eps=m.rms_norm_eps,
                          rope_theta=m.rope_theta, max_position_embeddings=m.max_position_embeddings,
                          tie_word_embeddings=True, hidden_act=m.hidden_act)
    BitNetForCausalLM(config).save_pretrained(tmp)
    cfg_file = tmp / "config.json"
    raw = json.loads(cfg_file.read_text())
    raw["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                  "quantization_mode": "online"}
    cfg_file.write_text(json.dumps(raw))
    hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ours = {k.removeprefix("model."): v for k, v in torch.load(consolidated, weights_only=False)["state_dict"].items()}
    hf.load_state_dict(to_hf_state_dict(ours), strict=True)
    with torch.no_grad():
        return hf(_ids()).logits, _logits(module)


def _assert_matches_reference(out: Path, reference) -> dict[int, float]:
    """Same global batches -> same losses, scales and validation loss as one process."""
    ref_out, ref_metrics = reference
    losses, ref_losses = _log(out, "train/loss"), _log(ref_out, "train/loss")
    assert sorted(losses) == sorted(ref_losses) == [0, 1, 2, 3]
    torch.testing.assert_close(torch.tensor(list(losses.values())), torch.tensor(list(ref_losses.values())), **TOL)
    gammas, ref_gammas = _log(out, "quant/gamma_mean"), _log(ref_out, "quant/gamma_mean")
    assert gammas and sorted(gammas) == sorted(ref_gammas)
    torch.testing.assert_close(torch.tensor(list(gammas.values())), torch.tensor(list(ref_gammas.values())), **TOL)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokens_seen"] == ref_metrics["tokens_seen"] and metrics["steps"] == 4
    assert metrics["val_loss"] == pytest.approx(ref_metrics["val_loss"], rel=2e-5)
    return losses


# ZeRO-3 keeps parameters under 1e5 elements whole by default: shard every one of this tiny model's
SHARD_ALL = ["strategy.param_persistence_threshold=0"]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_resume_and_consolidate(case, reference, tmp_path, data_cache, dynamo_disabled):
    strategy, extra = CASES[case]
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is in the `distributed` extra")
    ref_out, _ = reference
    out = tmp_path / "run"
    extra = [*extra, *(SHARD_ALL if strategy == "deepspeed_zero3" else [])]
    _two_processes(strategy, out, data_cache, *extra)
    losses = _assert_matches_reference(out, reference)

    # the strategy's own checkpoint resumes: steps 3 and 4 again, exactly
    mid = out / "checkpoints" / "step-000002.ckpt"
    assert checkpoint_kind(mid) == KIND[strategy]
    resumed = tmp_path / "resumed"
    _two_processes(strategy, resumed, data_cache, *extra, f"ckpt_path={mid}")
    again = _log(resumed, "train/loss")
    assert sorted(again) == [2, 3], again
    for step in again:
        assert again[step] == pytest.approx(losses[step], rel=1e-6, abs=1e-6), (step, again[step], losses[step])

    # one consolidated Lightning checkpoint: loads into PretrainModule, same logits as the reference
    consolidated = tmp_path / "consolidated.ckpt"
    consolidate(out / "checkpoints" / "last.ckpt", consolidated)
    module = PretrainModule.load_from_checkpoint(consolidated, map_location="cpu", weights_only=False)
    ref_module = PretrainModule.load_from_checkpoint(ref_out / "checkpoints" / "last.ckpt", map_location="cpu",
                                                     weights_only=False)
    state, ref_state = module.state_dict(), ref_module.state_dict()
    assert set(state) == set(ref_state)
    beyond = total = 0
    for key in ref_state:
        torch.testing.assert_close(state[key], ref_state[key], rtol=0, atol=FINAL_ATOL, msg=key)
        far = ~torch.isclose(state[key], ref_state[key], **TOL)
        beyond, total = beyond + int(far.sum()), total + far.numel()
    assert beyond <= FINAL_FRACTION * total, (beyond, total)
    logits, ref_logits = _logits(module), _logits(ref_module)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=LOGIT_ATOL)
    assert (logits - ref_logits).abs().mean() <= LOGIT_MEAN
    untrained = PretrainModule(ref_module.hparams["model"], ref_module.hparams["quant"], ref_module.hparams["optim"])
    # not vacuous: training moved the logits by far more than the tolerances
    assert (_logits(untrained) - ref_logits).abs().mean() > 10 * LOGIT_MEAN

    # and it exports: transformers' BitNet with these weights computes our logits (the consolidated
    # format is the same for every kind; checked once, on the most sharded one)
    if strategy != "deepspeed_zero3":
        return
    hf_logits, our_logits = _export_logits(consolidated, tmp_path / "hf")
    torch.testing.assert_close(hf_logits, our_logits, rtol=1e-5, atol=1e-5)


def test_zero3_with_optimizer_and_parameter_offload_matches_one_process(reference, tmp_path, data_cache):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the `distributed` extra")
    out = tmp_path / "run"
    _two_processes("deepspeed_zero3", out, data_cache, *SHARD_ALL, "strategy.offload_optimizer=true",
                   "strategy.offload_parameters=true", "trainer.max_steps=2")
    ref_losses = _log(reference[0], "train/loss")
    losses = _log(out, "train/loss")
    assert sorted(losses) == [0, 1]
    for step in losses:
        assert losses[step] == pytest.approx(ref_losses[step], rel=2e-5, abs=2e-5)
