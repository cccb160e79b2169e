"""Checkpoint kinds, which strategy resumes which, `ckpt_path=auto`, and consolidation of a single file."""

from __future__ import annotations

import os
import time

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from bitnet_train.config import ConfigError
from bitnet_train.consolidate import default_output, main
from bitnet_train.lit.run_checkpoints import (check_resumable, checkpoint_kind, complete_state_dict, consolidate,
                                          newest_resumable)
from bitnet_train.parallel.fsdp2 import FSDP2Strategy
from bitnet_train.lit.pretrain import PretrainModule

MODEL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
         "num_attention_heads": 2}


def _module() -> PretrainModule:
    torch.manual_seed(0)
    return PretrainModule(MODEL, {}, {})


def _lightning_file(path, module: PretrainModule, **extra) -> None:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 7,
                "epoch": 0, "optimizer_states": [{"state": {}}], "tokens_seen": 99, **extra}, path)


def test_kinds(tmp_path):
    (tmp_path / "f.ckpt").write_bytes(b"x")
    (tmp_path / "dcp.ckpt").mkdir()
    (tmp_path / "dcp.ckpt" / ".metadata").write_bytes(b"x")
    (tmp_path / "ds.ckpt" / "checkpoint").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert checkpoint_kind(tmp_path / "f.ckpt") == "file"
    assert checkpoint_kind(tmp_path / "dcp.ckpt") == "fsdp2"
    assert checkpoint_kind(tmp_path / "ds.ckpt") == "deepspeed"
    with pytest.raises(ConfigError, match="neither an FSDP2"):
        checkpoint_kind(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoint_kind(tmp_path / "missing.ckpt")


def test_a_checkpoint_resumes_only_under_its_strategy(tmp_path):
    (tmp_path / "ds.ckpt" / "checkpoint").mkdir(parents=True)
    (tmp_path / "f.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"is a deepspeed checkpoint, which resumes only under strategy=deepspeed"):
        check_resumable(tmp_path / "ds.ckpt", DDPStrategy())
    with pytest.raises(ConfigError, match=r"is a file checkpoint.*python -m bitnet_train.consolidate"):
        check_resumable(tmp_path / "f.ckpt", FSDP2Strategy())
    assert check_resumable(tmp_path / "f.ckpt", None) == "file"


def test_auto_resume_takes_the_newest(tmp_path):
    assert newest_resumable(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert newest_resumable(tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.mkdir()  # a sharded requeue checkpoint: its newest file counts
    (hpc / "shard").write_bytes(b"x")
    now = time.time()
    os.utime(last, (now - 100, now - 100))
    assert newest_resumable(tmp_path) == str(hpc)
    os.utime(hpc / "shard", (now - 200, now - 200))
    assert newest_resumable(tmp_path) == str(last)


def test_consolidate_a_file_keeps_weights_and_drops_optimizer(tmp_path):
    module = _module()
    _lightning_file(tmp_path / "last.ckpt", module)
    out = consolidate(tmp_path / "last.ckpt", tmp_path / "one.ckpt")
    assert "optimizer_states" not in out and out["global_step"] == 7 and out["tokens_seen"] == 99
    assert out["consolidated_from"]["kind"] == "file"
    loaded = PretrainModule.load_from_checkpoint(tmp_path / "one.ckpt", weights_only=False)
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_tied_weight_under_one_name_is_completed():
    module = _module()
    state = module.state_dict()
    assert module.model.lm_head.weight is module.model.model.embed_tokens.weight
    partial = {k: v for k, v in state.items() if k != "model.lm_head.weight"}
    full = complete_state_dict(partial, dict(module.hparams))
    assert set(full) == set(state) and torch.equal(full["model.lm_head.weight"], state["model.lm_head.weight"])
    with pytest.raises(ConfigError, match="lacks model.model.norm.weight"):
        complete_state_dict({k: v for k, v in state.items() if k != "model.model.norm.weight"}, dict(module.hparams))
    with pytest.raises(ConfigError, match="entries the model lacks"):
        complete_state_dict({**state, "extra.weight": torch.zeros(1)}, dict(module.hparams))


def test_cli(tmp_path, capsys):
    module = _module()
    _lightning_file(tmp_path / "last.ckpt", module)
    assert main([str(tmp_path / "last.ckpt")]) == 0
    assert default_output(tmp_path / "last.ckpt") == tmp_path / "last-consolidated.ckpt"
    assert (tmp_path / "last-consolidated.ckpt").is_file()
    assert "from a file checkpoint" in capsys.readouterr().out
    torch.save({"state_dict": module.state_dict()}, tmp_path / "bare.ckpt")
    assert main([str(tmp_path / "bare.ckpt"), str(tmp_path / "x.ckpt")]) == 2
    assert "has no hyper_parameters" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2


def test_a_zero_checkpoint_resumes_only_under_its_stage(tmp_path):
    pytest.importorskip("deepspeed")
    from bitnet_train.parallel.deepspeed import deepspeed_strategy

    for stage, names in ((2, ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]),
                         (3, ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])):
        folder = tmp_path / f"zero{stage}.ckpt"
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "latest").write_text("checkpoint")
        for name in names:
            (folder / "checkpoint" / name).write_bytes(b"x")
        assert check_resumable(folder, deepspeed_strategy(stage=stage, accelerator="cpu")) == "deepspeed"
        other = 5 - stage
        with pytest.raises(ConfigError, match=f"ZeRO stage {stage}, this run uses stage {other}: use "
                                              f"strategy=deepspeed_zero{stage}"):
            check_resumable(folder, deepspeed_strategy(stage=other, accelerator="cpu"))
