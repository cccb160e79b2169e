"""Every pack/unpack pair round-trips exactly, on random ternary matrices of many shapes (odd ones
included); the layouts are the documented ones; transformers' own packer agrees with pack_hf."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.kernels.packing import (
    k2_invalid_codes,
    k3_invalid_codes,
    pack_hf,
    pack_k2,
    pack_k3,
    repack_k3_to_k2,
    unpack_hf,
    unpack_k2,
    unpack_k3,
)

SHAPES = [(1, 1), (1, 4), (3, 5), (7, 13), (4, 255), (16, 256), (33, 257), (5, 1031), (64, 64)]


def _ternary(shape, seed, p_zero=None):
    g = torch.Generator().manual_seed(seed)
    if p_zero is None:
        return torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)
    u = torch.rand(shape, generator=g)
    return torch.where(u < p_zero, 0, torch.where(u < (1 + p_zero) / 2, -1, 1)).to(torch.int8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(4))
def test_round_trips(shape, seed):
    q = _ternary(shape, seed, p_zero=[None, 0.0, 0.5, 1.0][seed])
    k = shape[1]
    p2 = pack_k2(q)
    assert p2.dtype == torch.uint8 and p2.shape == (shape[0], -(-k // 4))
    assert torch.equal(unpack_k2(p2, k), q)
    p3 = pack_k3(q)
    assert p3.shape == (shape[0], -(-k // 5)) and int(p3.max()) <= 242
    assert torch.equal(unpack_k3(p3, k), q)
    assert torch.equal(repack_k3_to_k2(p3, k), p2)
    assert not k2_invalid_codes(p2) and not k3_invalid_codes(p3)
    if shape[0] % 4 == 0:
        assert torch.equal(unpack_hf(pack_hf(q)), q)


def test_k2_layout_is_strided_along_k():
    q = torch.tensor([[1, -1, 0, 1, 0, -1, 1]], dtype=torch.int8)  # K = 7, K4 = 2
    p = pack_k2(q)
    codes = q.to(torch.int16) + 1
    # byte j holds columns j, j + 2, j + 4, j + 6 (padding code 1 past K)
    expect0 = codes[0, 0] | codes[0, 2] << 2 | codes[0, 4] << 4 | codes[0, 6] << 6
    expect1 = codes[0, 1] | codes[0, 3] << 2 | codes[0, 5] << 4 | 1 << 6
    assert p.tolist() == [[int(expect0), int(expect1)]]


def test_k3_layout_is_base3():
    q = torch.tensor([[1, 0, -1, 1, -1, 0]], dtype=torch.int8)  # K = 6, K5 = 2: byte j holds j, j+2, j+4, ...
    p = pack_k3(q)
    c = (q.to(torch.int16) + 1)[0].tolist() + [1] * 4
    assert p.tolist() == [[c[0] + 3 * c[2] + 9 * c[4] + 27 * c[6] + 81 * c[8],
                           c[1] + 3 * c[3] + 9 * c[5] + 27 * c[7] + 81 * c[9]]]


@pytest.mark.usefixtures("dynamo_disabled")
@pytest.mark.parametrize("shape", [(4, 3), (12, 7), (64, 33)])
def test_pack_hf_equals_transformers(shape):
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    q = _ternary(shape, 11)
    theirs = pack_weights(q.clone().to(torch.int16))  # pack_weights adds 1 to its input in place
    assert torch.equal(pack_hf(q), theirs)
    assert torch.equal(unpack_weights(pack_hf(q), dtype=torch.float32), q.float())


def test_corrupt_codes_are_detected():
    p = pack_k2(_ternary((4, 8), 0))
    p[1, 1] |= 0b11 << 4
    assert k2_invalid_codes(p)
    p3 = pack_k3(_ternary((4, 10), 0))
    p3[0, 0] = 243
    assert k3_invalid_codes(p3)


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="outside"):
        pack_k2(torch.tensor([[2, 0]], dtype=torch.int8))
    with pytest.raises(ValueError, match="divisible by 4"):
        pack_hf(torch.zeros(6, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="K=9"):
        unpack_k2(torch.zeros(2, 2, dtype=torch.uint8), 9)
