"""The exact code product on every kernel against an int64 product, and the choice of the CPU kernel."""

import pytest
import torch

from bitnet_train.quant import code_matmul as cm


@pytest.fixture
def restore_kernel():
    before = cm._CPU_KERNEL[0]
    yield
    cm._CPU_KERNEL[0] = before


def _codes(m, k, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    return a, b, (a.long() @ b.long().t())


@pytest.mark.parametrize("kernel", cm.CPU_KERNELS)
@pytest.mark.parametrize("shape", [(9, 1000, 13), (64, 4096, 96), (1, 7, 3)])
def test_every_cpu_kernel_is_exact(kernel, shape, restore_kernel):
    if kernel not in cm.available_cpu_kernels():
        pytest.skip(f"{kernel} is not in this torch build")
    a, b, exact = _codes(*shape)
    a[0, :] = 127  # the extreme codes, where the uint8 shift of FBGEMM's input would overflow if wrong
    a[-1, :] = -127
    exact = a.long() @ b.long().t()
    cm.set_cpu_kernel(kernel)
    got = cm.code_matmul(a, b)
    assert got.dtype in (torch.int32, torch.float32)
    assert torch.equal(got.long(), exact)
    assert torch.equal(cm.code_matmul(a, b, a.float()).long(), exact)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 product would round sums above 256
        assert torch.equal(cm.code_matmul(a, b).long(), exact)


def test_fbgemm_weight_is_packed_once_per_codes_tensor(monkeypatch, restore_kernel):
    if "fbgemm" not in cm.available_cpu_kernels():
        pytest.skip("no FBGEMM in this torch build")
    calls = []
    real = torch.ops.quantized.linear_prepack
    monkeypatch.setattr(torch.ops.quantized, "linear_prepack", lambda *a: calls.append(1) or real(*a), raising=False)
    a, b, exact = _codes(16, 64, 8)
    cm.set_cpu_kernel("fbgemm")
    for _ in range(3):
        assert torch.equal(cm.code_matmul(a, b).long(), exact)
    assert len(calls) == 1
    cm.code_matmul(a, b.clone())  # new codes (the next optimizer step): packed again
    assert len(calls) == 2


def test_calibration_keeps_the_fastest_kernel(monkeypatch, restore_kernel):
    cost = {"int_mm": 0.05, "fbgemm": 0.002, "float": 0.01}
    clock = [0.0]
    real_run = cm._run

    def fake_run(kernel, *args):
        clock[0] += cost[kernel]
        return real_run("float", *args)

    monkeypatch.setattr(cm, "_run", fake_run)
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(cm, "available_cpu_kernels", lambda: list(cm.CPU_KERNELS))
    cm.set_cpu_kernel(None)
    assert cm.cpu_kernel() == "fbgemm"
    cost["fbgemm"] = 1.0
    assert cm.cpu_kernel() == "fbgemm"  # measured once per process
    cm.set_cpu_kernel(None)
    assert cm.cpu_kernel() == "float"


def test_calibration_ignores_a_slow_first_call_and_drops_a_far_behind_kernel(monkeypatch, restore_kernel):
    calls = {"int_mm": 0, "fbgemm": 0, "float": 0}
    clock = [0.0]
    real_run = cm._run

    def fake_run(kernel, *args):
        calls[kernel] += 1
        if kernel == "int_mm":  # one-time code generation on the first call, then the fastest
            clock[0] += 1.0 if calls[kernel] == 1 else 0.001
        else:
            clock[0] += {"fbgemm": 0.002, "float": 0.01}[kernel]
        return real_run("float", *args)

    monkeypatch.setattr(cm, "_run", fake_run)
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(cm, "available_cpu_kernels", lambda: list(cm.CPU_KERNELS))
    cm.set_cpu_kernel(None)
    assert cm.cpu_kernel() == "int_mm"

    def slow_int_mm_run(kernel, *args):  # int_mm without int8 dot-product instructions
        calls[kernel] += 1
        clock[0] += 0.5 if kernel == "int_mm" else 0.01
        return real_run("float", *args)

    calls.update(int_mm=0, fbgemm=0, float=0)
    monkeypatch.setattr(cm, "_run", slow_int_mm_run)
    cm.set_cpu_kernel(None)
    assert cm.cpu_kernel() in ("fbgemm", "float")
    assert calls["int_mm"] == 2  # warm-up and one timed product, 50x the float product: not timed further
    assert calls["float"] == 2 + cm._CALIBRATION_ROUNDS


def test_unknown_kernel_is_refused(restore_kernel):
    with pytest.raises(ValueError, match="not available"):
        cm.set_cpu_kernel("cublas")


def test_fp32_kernels_refuse_an_inexact_inner_size(restore_kernel):
    cm.set_cpu_kernel("float")
    with pytest.raises(ValueError, match="too large"):
        cm.code_matmul(torch.zeros(1, cm.CODE_MATMUL_MAX_K, dtype=torch.int8),
                       torch.zeros(1, cm.CODE_MATMUL_MAX_K, dtype=torch.int8))


def test_bench_tool_prints_every_kernel_and_equal_integers(capsys, restore_kernel):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "tools" / "bench_code_matmul.py"
    if not path.is_file():
        pytest.skip("tools/ exists only in a checkout")
    spec = importlib.util.spec_from_file_location("tool_bench_code_matmul", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--shapes", "32x64x16,17x40x8", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 32 x") or line.startswith("| 17 x")]
    assert len(rows) == 2 and all(row.rstrip().endswith("| yes |") for row in rows)
    assert all(f"{k} ms" in out for k in cm.available_cpu_kernels())
