"""Activation sparsity per projection type, counted as BitNet a4.8's Table 2 counts it."""

from __future__ import annotations

import pytest
import torch

from bitnet_train.config import ModelConfig, QuantConfig
from bitnet_train.models.decoder import CausalLM
from bitnet_train.quant.convert import bitlinear_modules, quantize_model
from bitnet_train.quant.sparsity import ActivationSparsity

A48 = {"q_proj": "int4_absmean", "k_proj": "int4_absmean", "v_proj": "int4_absmean", "o_proj": "int8_absmax_top50",
       "gate_proj": "int4_absmean", "up_proj": "int4_absmean", "down_proj": "int8_absmax"}


def _model(schemes: dict, act: str = "relu2") -> CausalLM:
    torch.manual_seed(0)
    m = CausalLM(ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, hidden_act=act, initializer_range=0.1))
    quantize_model(m, QuantConfig(activation_schemes=schemes))
    return m.eval()


def _manual(model: CausalLM, ids: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Zeros / entries of every layer's quantized input, and of relu(gate) <= 0, by explicit capture."""
    seen: dict[str, list] = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, n=name: seen.setdefault(n, []).append(
        mod.quantized_input(args[0]))) for name, layer in bitlinear_modules(model).items()]
    hooks += [layer.mlp.gate_proj.register_forward_hook(lambda mod, args, out: seen.setdefault("gate_out", []).append(
        out)) for layer in model.model.layers]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return {n: (sum(float((t == 0).sum()) for t in ts), sum(t.numel() for t in ts)) if n != "gate_out" else
            (sum(float((t <= 0).sum()) for t in ts), sum(t.numel() for t in ts)) for n, ts in seen.items()}


def test_counts_match_an_explicit_capture_and_the_papers_definitions():
    model = _model(A48)
    ids = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    with ActivationSparsity(model) as probe, torch.no_grad():
        model(ids)
    report = probe.report()
    manual = _manual(model, ids)

    def share(kind):
        z = sum(v[0] for n, v in manual.items() if n.endswith(kind))
        return z / sum(v[1] for n, v in manual.items() if n.endswith(kind))

    assert report["qkv"] == pytest.approx((share("q_proj") + share("k_proj") + share("v_proj")) / 3)
    assert report["out"] == pytest.approx(share("o_proj")) and report["out"] >= 0.5  # top-K 50%, then INT8 zeros
    assert report["gate"] == pytest.approx(share("gate_proj")) and 0.03 < report["gate"] < 0.3  # INT4 zeros
    assert report["down"] == pytest.approx(share("down_proj")) and report["down"] >= report["gate_output"] > 0.3
    gate_out = manual["gate_out"][0] / manual["gate_out"][1]
    assert report["gate_output"] == pytest.approx(gate_out)
    assert report["up"] == pytest.approx(1 - (1 - share("up_proj")) * (1 - gate_out))
    params = {"qkv": 3 * 64 * 64, "out": 64 * 64, "up": 64 * 128, "gate": 64 * 128, "down": 128 * 64}
    overall = sum(params[k] * report[k] for k in params) / sum(params.values())
    assert report["overall"] == pytest.approx(overall)
    # hooks are gone afterwards
    assert all(not layer._forward_pre_hooks for layer in bitlinear_modules(model).values())


def test_b158_silu_has_no_output_sparsity_and_little_input_sparsity():
    model = _model({}, act="silu")
    with ActivationSparsity(model) as probe, torch.no_grad():
        model(torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2)))
    report = probe.report()
    assert report["gate_output"] == 0.0 and report["up"] == pytest.approx(report["up_input"])
    assert report["qkv"] < 0.05 and report["out"] < 0.2


def test_paper_overall_from_its_per_projection_figures():
    """The parameter-weighted definition gives a4.8's own 42.5% (700M: hidden 1536, GLU 4096)."""
    d, f = 1536, 4096
    params = {"qkv": 3 * d * d, "out": d * d, "up": d * f, "gate": d * f, "down": f * d}
    paper = {"qkv": 12.1, "out": 50.0, "up": 66.2, "gate": 12.1, "down": 80.9}
    assert sum(params[k] * paper[k] for k in params) / sum(params.values()) == pytest.approx(42.5, abs=0.1)
