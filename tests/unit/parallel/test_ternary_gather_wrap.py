"""strategy.gather=codes and packed, in one process: the 2-bit packing, which layers get the code-gathering weight, that it behaves as its
fp32 data everywhere else (math, optimizer, state dict), and the refusals. The 2-process checks are
tests/integration/test_ternary_gather.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitnet_train.config import ConfigError
from bitnet_train.parallel.fsdp2 import FSDP2Strategy
from bitnet_train.parallel.ternary_gather import (PackedTernaryGatherWeight, TernaryGatherWeight, pack_ternary,
                                                  unpack_ternary, wrap_for_code_gather)
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


def test_packed_layers_get_the_packing_weight_and_keep_it_through_detach():
    model = _model()
    assert wrap_for_code_gather(model, packed=True) == ["0"]
    assert type(model[0].weight.data) is PackedTernaryGatherWeight
    assert type(model[0].weight.detach()) is PackedTernaryGatherWeight  # FSDP2 shards through such views
    assert type(model.state_dict()["0.weight"]) is torch.Tensor


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 64, 1001])
def test_pack_ternary_layout_and_round_trip(n):
    codes = torch.randint(-1, 2, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 3) // 4
    c = [v + 1 for v in codes.tolist()] + [1] * (-n % 4)  # code + 1, padded with code 0
    want = [c[4 * j] + 4 * c[4 * j + 1] + 16 * c[4 * j + 2] + 64 * c[4 * j + 3] for j in range(len(c) // 4)]
    assert packed.tolist() == want
    assert unpack_ternary(packed, n).tolist() == codes.tolist()


def test_packed_shards_unpack_in_rank_order():
    """Two ranks' padded shards [3, 5] (15 codes: 4 bytes each, one padding code) gathered end to end."""
    g = torch.Generator().manual_seed(1)
    shards = [torch.randint(-1, 2, (3, 5), generator=g, dtype=torch.int8) for _ in range(2)]
    gathered = torch.cat([PackedTernaryGatherWeight._to_wire(s) for s in shards])
    whole = PackedTernaryGatherWeight._from_wire(gathered, torch.Size([3, 5]))
    assert whole.dtype == torch.int8 and torch.equal(whole, torch.cat(shards))
