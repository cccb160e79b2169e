"""The fast Walsh-Hadamard transform against scipy's Hadamard matrix; BitNet v2's H-BitLinear."""

from __future__ import annotations

import pytest
import torch
from scipy.linalg import hadamard

from bitnet_train.config import ConfigError, QuantConfig
from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.hadamard import check_hadamard_size, hadamard_transform


def _orthonormal(n: int) -> torch.Tensor:
    return torch.from_numpy(hadamard(n)).double() / n ** 0.5


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512, 1024, 2048])
def test_equals_the_orthonormal_matrix(n):
    x = torch.randn(3, 5, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    expected = x @ _orthonormal(n)  # symmetric: x H = (H x^T)^T
    torch.testing.assert_close(hadamard_transform(x), expected.float().double(), rtol=1e-5, atol=1e-5)
    assert hadamard_transform(x.float()).dtype == torch.float32
    assert hadamard_transform(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("n", [2, 16, 256])
def test_own_inverse_and_norm_preserving(n):
    x = torch.randn(7, n, generator=torch.Generator().manual_seed(1))
    y = hadamard_transform(x)
    torch.testing.assert_close(hadamard_transform(y), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(y, x)


def test_block_diagonal():
    x = torch.randn(4, 48, generator=torch.Generator().manual_seed(2))
    blocks = torch.block_diag(*[_orthonormal(16).float()] * 3)
    torch.testing.assert_close(hadamard_transform(x, 16), x @ blocks, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="power of two dividing"):
        hadamard_transform(x)  # 48 is not a power of two
    with pytest.raises(ValueError, match="power of two dividing"):
        hadamard_transform(x, 32)


def test_gradient_is_the_transform():
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    g = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    hadamard_transform(x).backward(g)
    torch.testing.assert_close(x.grad, hadamard_transform(g), rtol=1e-5, atol=1e-6)


def test_sizes_checked_with_the_fix():
    assert check_hadamard_size(512, None, "x") == 512 and check_hadamard_size(688, 16, "x") == 16
    with pytest.raises(ConfigError, match="688.*quant.hadamard_block"):
        check_hadamard_size(688, None, "H-BitLinear model.layers.0.mlp.down_proj")
    with pytest.raises(ConfigError, match="does not divide"):
        check_hadamard_size(688, 32, "x")
    with pytest.raises(ConfigError, match="quant.hadamard_block=12"):
        QuantConfig(hadamard_block=12)


def test_h_bitlinear_quantizes_the_rotated_normed_input():
    torch.manual_seed(0)
    plain = BitLinear(64, 24, input_norm=True, activation_scheme="int4_absmean")
    rotated = BitLinear(64, 24, input_norm=True, activation_scheme="int4_absmean", hadamard_block=64)
    rotated.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.input_norm.weight.uniform_(0.5, 1.5)
        rotated.input_norm.weight.copy_(plain.input_norm.weight)
    x = torch.randn(2, 9, 64)
    # H-BitLinear(x) = BitLinear without its norm applied to H(norm(x))
    bare = BitLinear(64, 24, activation_scheme="int4_absmean")
    bare.load_state_dict({"weight": plain.weight})
    expected = bare(hadamard_transform(plain.input_norm(x)))
    assert torch.equal(rotated(x), expected)
    assert not torch.allclose(rotated(x), plain(x))
    # the rotation is architecture: it stays at lambda 0 (no quantization)
    rotated.set_lambda(0.0, 0.0)
    torch.testing.assert_close(rotated(x), torch.nn.functional.linear(hadamard_transform(plain.input_norm(x)),
                                                                      rotated.weight))
