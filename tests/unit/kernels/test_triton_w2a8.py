"""The Triton W2A8 kernel under TRITON_INTERPRET=1 equals the torch reference exactly, int32 and float,
for one token (split-K GEMV) and many (tl.dot GEMM), odd sizes included; the reference equals an
int64 computation written from the definition; block sizes a GPU would reject are refused."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.kernels.dispatch import resolve_backend, ternary_matmul
from bitnet_train.kernels.packing import pack_k2
from bitnet_train.kernels.reference import ternary_matmul_int32_reference, ternary_matmul_reference

# (M, N, K, kernel options): large blocks keep the interpreter fast (its cost grows with the number of programs)
CASES = [
    (1, 37, 300, {}),
    (1, 64, 1024, dict(block_j=64, split_k=4)),
    (1, 130, 517, dict(block_n=64, block_j=32, split_k=3)),
    (3, 33, 257, {}),
    (16, 64, 512, dict(block_j=128)),
    (33, 70, 130, dict(block_m=64, block_j=32)),
]


def _operands(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    x_mult = torch.rand(m, generator=g) * 0.02 + 1e-3
    w_scale = torch.tensor([0.0371])
    return q, x, x_mult, w_scale


def test_reference_matches_definition():
    q, x, _, _ = _operands(5, 11, 37, 0)
    expect = torch.einsum("mk,nk->mn", x.long(), q.long())
    assert torch.equal(ternary_matmul_int32_reference(x, pack_k2(q), 37).long(), expect)


@pytest.mark.parametrize("m,n,k,opts", CASES, ids=[f"M{c[0]}-N{c[1]}-K{c[2]}" for c in CASES])
def test_kernel_equals_reference_exactly(triton_kernel, m, n, k, opts):
    q, x, x_mult, w_scale = _operands(m, n, k, m * 1000 + n)
    packed = pack_k2(q)
    acc = triton_kernel.ternary_matmul_triton(x, x_mult, packed, w_scale, k, int_out=True, **opts)
    ref = ternary_matmul_int32_reference(x, packed, k)
    assert acc.dtype == torch.int32 and torch.equal(acc, ref)
    assert ref.abs().max() > 0
    y = triton_kernel.ternary_matmul_triton(x, x_mult, packed, w_scale, k, **opts)
    assert torch.equal(y, ternary_matmul_reference(x, x_mult, packed, w_scale, k))


def test_extreme_activations(triton_kernel):
    k = 640
    q = torch.ones(32, k, dtype=torch.int8)
    q[1] = -1
    x = torch.full((1, k), -128, dtype=torch.int8)
    acc = triton_kernel.ternary_matmul_triton(x, torch.ones(1), pack_k2(q), torch.ones(1), k, int_out=True)
    assert acc[0, 0].item() == -128 * k and acc[0, 1].item() == 128 * k


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_n=24), "power of two"),
    (dict(block_m=8), "block_m=8"),
    (dict(block_j=16), "block_j=16"),
    (dict(block_m=1024, block_n=2048), "exceeds"),
])
def test_illegal_blocks_refused(triton_kernel, kwargs, match):
    q, x, x_mult, w_scale = _operands(4 if "block_m" in kwargs or "block_j" in kwargs else 1, 8, 64, 0)
    if "block_n" in kwargs and "block_m" not in kwargs:
        x, x_mult = x[:1], x_mult[:1]
    with pytest.raises(ValueError, match=match):
        triton_kernel.ternary_matmul_triton(x, x_mult, pack_k2(q), w_scale, 64, **kwargs)


def test_dispatch(triton_kernel):
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("triton", torch.device("cpu")) == "triton"  # interpreter on
    with pytest.raises(ValueError, match="backend='fast'"):
        resolve_backend("fast", torch.device("cpu"))
    q, x, x_mult, w_scale = _operands(2, 9, 40, 3)
    packed = pack_k2(q)
    a = ternary_matmul(x, x_mult, packed, w_scale, 40, backend="triton")
    b = ternary_matmul(x, x_mult, packed, w_scale, 40, backend="auto")
    assert torch.equal(a, b)


GPU_CHECK = """
import torch
from bitnet_train.kernels.packing import pack_k2
from bitnet_train.kernels.reference import ternary_matmul_int32_reference, ternary_matmul_reference
from bitnet_train.kernels.triton_w2a8 import ternary_matmul_triton
g = torch.Generator().manual_seed(0)
for m, n, k in [(1, 2560, 2560), (1, 640, 2560), (16, 6912, 2560), (128, 2560, 6912), (7, 37, 300)]:
    q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8).cuda()
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8).cuda()
    xm, ws = (torch.rand(m, generator=g) * 0.02).cuda(), torch.tensor([0.0371]).cuda()
    p = pack_k2(q)
    assert torch.equal(ternary_matmul_triton(x, xm, p, ws, k, int_out=True), ternary_matmul_int32_reference(x, p, k)), (m, n, k)
    y = ternary_matmul_triton(x, xm, p, ws, k)
    assert torch.allclose(y, ternary_matmul_reference(x, xm, p, ws, k), rtol=1e-6, atol=0), (m, n, k)
print("ok")
"""


@pytest.mark.gpu
def test_compiled_kernel_on_gpu_equals_reference():
    """The compiled kernel (not the interpreter: a fresh process without TRITON_INTERPRET) on CUDA tensors."""
    import os
    import subprocess
    import sys

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", GPU_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
