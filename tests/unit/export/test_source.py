"""What the exporters accept: Lightning checkpoints, consolidated state dicts (torch or safetensors) with
their settings found beside them, and one-line errors for everything else."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from bitnet_train.config import ConfigError
from bitnet_train.export.source import load_source

from exporttest_helpers import SMALL, TOKENIZER, ids, save_checkpoint


def test_lightning_checkpoint_gives_the_trained_quantized_model(tmp_path):
    module = save_checkpoint(tmp_path / "last.ckpt", quant={"norm": "all_linear"})
    src = load_source(tmp_path / "last.ckpt", tokenizer=TOKENIZER)
    assert src.quant_cfg.norm == "all_linear" and src.model_cfg.hidden_size == 64
    with torch.no_grad():
        assert torch.equal(src.model(ids()), module.model.eval()(ids()))


def test_consolidated_state_dicts_with_config_beside(tmp_path):
    module = save_checkpoint(tmp_path / "orig.ckpt")
    state = {f"_forward_module.{k}": v for k, v in module.state_dict().items()}  # DeepSpeed-style prefix
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "model: " + json.dumps(dict(module.hparams)["model"]) + "\nquant: " + json.dumps(dict(module.hparams)["quant"])
        + "\ndata: {tokenizer: null}\n")
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": state}, run / "checkpoints" / "consolidated.pt")
    save_file({k: v.contiguous() for k, v in module.model.state_dict().items() if k != "lm_head.weight"},
              str(run / "checkpoints" / "model.safetensors"))
    for name in ("consolidated.pt", "model.safetensors"):
        src = load_source(run / "checkpoints" / name)  # tokenizer: data.tokenizer=null -> the shipped one
        with torch.no_grad():
            assert torch.equal(src.model(ids()), module.model.eval()(ids()))
        assert src.tokenizer.vocab_size == 4096


def test_explicit_config_file(tmp_path):
    module = save_checkpoint(tmp_path / "orig.ckpt")
    torch.save(module.model.state_dict(), tmp_path / "flat.pt")
    cfg = tmp_path / "elsewhere.json"
    cfg.write_text(json.dumps({"model": dict(module.hparams)["model"], "quant": dict(module.hparams)["quant"]}))
    src = load_source(tmp_path / "flat.pt", config=cfg, tokenizer=TOKENIZER)
    assert src.model_cfg.num_key_value_heads == 2


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("suffix", "suffix"),
    ("garbage", "cannot be read"),
    ("no_config", "pass --config"),
    ("fp", "full precision"),
    ("no_tokenizer", "pass --tokenizer"),
    ("shape", "shape"),
    ("small_vocab", "tokenizer"),
])
def test_bad_inputs(tmp_path, case, match):
    path = tmp_path / "x.ckpt"
    kwargs = {"tokenizer": TOKENIZER}
    if case == "suffix":
        path = tmp_path / "x.txt"
        path.write_text("hi")
    elif case == "garbage":
        path.write_bytes(b"not a zip")
    elif case == "no_config":
        module = save_checkpoint(tmp_path / "o.ckpt")
        torch.save(module.model.state_dict(), path)
    elif case == "fp":
        save_checkpoint(path, quant={"enabled": False})
    elif case == "no_tokenizer":
        save_checkpoint(path)
        kwargs = {}
    elif case == "shape":
        module = save_checkpoint(tmp_path / "o.ckpt")
        obj = {"state_dict": module.state_dict(), "hyper_parameters": {**dict(module.hparams),
                                                                       "model": {**SMALL, "hidden_size": 32}}}
        torch.save(obj, path)
    elif case == "small_vocab":
        save_checkpoint(path, model={"vocab_size": 100})
    with pytest.raises(ConfigError, match=match):
        load_source(path, **kwargs)
