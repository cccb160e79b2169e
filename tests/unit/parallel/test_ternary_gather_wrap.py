"""strategy.gather=codes, in one process: which layers get the code-gathering weight, that it behaves as its
fp32 data everywhere else (math, optimizer, state dict), and the refusals. The 2-process checks are
tests/integration/test_ternary_gather.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitnet_train.config import ConfigError
from bitnet_train.parallel.fsdp2 import FSDP2Strategy
from bitnet_train.parallel.ternary_gather import TernaryGatherWeight, wrap_for_code_gather
from bitnet_train.quant.bitlinear import BitLinear


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(BitLinear(8, 8), BitLinear(8, 8, weight_lambda=0.5), BitLinear(8, 8, weight_scale="absmedian"),
                         nn.Linear(8, 8))


def test_only_fully_quantized_absmean_layers_are_wrapped():
    model = _model()
    assert wrap_for_code_gather(model) == ["0"]
    assert isinstance(model[0].weight, nn.Parameter) and isinstance(model[0].weight.data, TernaryGatherWeight)
    assert model[0].weight_gathered_quantized and not model[1].weight_gathered_quantized


def test_the_wrapped_weight_behaves_as_its_data():
    plain, wrapped = _model(), _model()
    wrap_for_code_gather(wrapped)
    x = torch.randn(3, 8)
    for model in (plain, wrapped):  # one process: no gather, forward quantizes as usual
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(wrapped[0].weight._data, plain[0].weight.detach(), rtol=0, atol=0)
    assert type(wrapped.state_dict()["0.weight"]) is torch.Tensor  # checkpoints hold plain tensors
    assert type(wrapped[0].weight * 2) is torch.Tensor


def test_lowering_a_wrapped_layers_lambda_is_refused():
    model = _model()
    wrap_for_code_gather(model)
    model[0].set_lambda(weight=1.0)
    with pytest.raises(RuntimeError, match="strategy.gather=latent"):
        model[0].set_lambda(weight=0.5)


def test_unknown_gather_mode_is_one_line():
    with pytest.raises(ConfigError, match="strategy.gather='int4'"):
        FSDP2Strategy(gather="int4")
