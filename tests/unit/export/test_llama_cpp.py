"""Every GGUF variant the exporter writes, run in llama.cpp itself (llama-cpp-python): its logits at
every position of 200 tokens and its greedy tokens against our runtime (infer/, on the native export
of the same checkpoint).

llama.cpp quantizes activations its own way (8-bit blocks of 256 for TQ2_0/TQ1_0, of 32 for Q8_0,
none for F16, where ours takes one absmax scale per token) and keeps its KV cache in fp16, so logits
agree closely but not bit for bit, and a rounding flip can change a near-tie: on the logit scale
(the std of our logits) max |diff| <= 0.3, mean |diff| <= 0.05, next-token argmax equal at >= 90% of
the 200 positions. Greedy decoding runs through llama.cpp's KV cache one token at a time: along its
own 24 greedy tokens, its logits at every step meet the same tolerances against ours (teacher-forced on
that sequence) and each token it picks is our argmax up to twice the max tolerance. Equal greedy strings
are not required past the first 4 tokens: the models have the model's own initialization (N(0, 0.02)),
whose next-token distributions are nearly flat, so greedy strings part at the first near-tie. On a
trained model (`make train`'s) all greedy tokens agree: tools/llama_cpp_check.py, docs/RUNTIMES.md. A negative control (a relu^2 model written as SiLU, what the exporter refuses) must
fall outside these tolerances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bitnet_train.export.gguf_format import write_gguf
from bitnet_train.export.native import write_native
from bitnet_train.export.source import load_source
from bitnet_train.infer.generate import generate
from bitnet_train.infer.model import load_model
from bitnet_train.lit.pretrain import PretrainModule
from exporttest_helpers import SMALL, TOKENIZER, ids

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama_cpp

N_POS, N_GREEDY = 200, 24
# measured over the cases below: max |diff| 0.04-0.17 of the logit std, mean 0.004-0.027, argmax equal
# at 95-99% of positions
MAX_REL, MEAN_REL, ARGMAX_AGREE = 0.3, 0.05, 0.9


TINY_CONF = Path(__file__).resolve().parents[3] / "conf" / "model" / "tiny.yaml"
TINY = {k: v for k, v in yaml.safe_load(TINY_CONF.read_text()).items() if v is not None}
SHAPES = {
    "tiny-default": TINY,  # the default model, as conf/model/tiny.yaml defines it
    # a SmolLM2-sized student: rows of 576 are written Q8_0, the FFN's rows of 1536 TQ
    "d576": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3),
    # rows of 200 (not a multiple of 32): down_proj written F16
    "ffn200": dict(hidden_size=256, intermediate_size=200, num_attention_heads=4, num_key_value_heads=2),
}
CASES = ([("tiny-default", arch, qtype) for arch in ("bitnet", "llama") for qtype in ("tq2_0", "tq1_0")]
         + [(shape, arch, "tq2_0") for shape in ("d576", "ffn200") for arch in ("bitnet", "llama")])


def _checkpoint(path: Path, model: dict, quant: dict) -> Path:
    """The model's own initialization (N(0, 0.02) weights, unit norms), as training starts it: the
    scale of a real model's activations, where the tests' spread-out random weights would amplify
    every rounding difference through the layers."""
    torch.manual_seed(3)
    module = PretrainModule({**SMALL, **model}, quant, {})
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def _llama_scores(path: Path, tokens: list[int]) -> tuple[np.ndarray, list[int], np.ndarray]:
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False)
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.reset()
    prompt = tokens[:8]
    llm.eval(prompt)
    greedy, steps = [], []
    for _ in range(N_GREEDY):
        step = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        steps.append(step)
        greedy.append(int(np.argmax(step)))
        llm.eval([greedy[-1]])
    llm.close()
    return scores, greedy, np.stack(steps)


@pytest.mark.parametrize("shape,arch,qtype", CASES, ids=["-".join(c) for c in CASES])
def test_llama_cpp_matches_our_runtime(checkpoint, tmp_path, shape, arch, qtype):
    model = dict(SHAPES[shape])
    if arch == "llama":
        model["tie_word_embeddings"] = False  # arch llama also carries an untied head
    quant = dict() if arch == "bitnet" else dict(norm="none")
    src = load_source(_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", model, quant), tokenizer=TOKENIZER)
    gguf_path = write_gguf(src, tmp_path / "m.gguf", qtype=qtype)
    runtime, _, _ = load_model(write_native(src, tmp_path / "m.safetensors"))
    x = ids(seed=5, shape=(1, N_POS))
    with torch.no_grad():
        ours = runtime(x)[0].float().numpy()
        ours_greedy = generate(runtime, x[:, :8], N_GREEDY)[0, 8:].tolist()
    theirs, their_greedy, their_steps = _llama_scores(gguf_path, x[0].tolist())
    assert theirs.shape == ours.shape
    scale = ours.std()
    _assert_close_logits(theirs, ours, scale, "all positions")
    agree = (theirs.argmax(-1) == ours.argmax(-1)).mean()
    assert agree >= ARGMAX_AGREE, f"next-token argmax equal at {agree:.1%} of positions"
    assert their_greedy[:4] == ours_greedy[:4]
    # llama.cpp's incremental decoding (its KV cache), step by step, against ours on the same tokens
    with torch.no_grad():
        forced = runtime(torch.cat([x[:, :8], torch.tensor([their_greedy[:-1]])], 1))[0, 7:].float().numpy()
    _assert_close_logits(their_steps, forced, scale, "greedy steps")
    picked = forced[np.arange(N_GREEDY), their_greedy]
    assert np.all(picked >= forced.max(-1) - 2 * MAX_REL * scale), "llama.cpp picked a token far below our argmax"


def _assert_close_logits(theirs: np.ndarray, ours: np.ndarray, scale: float, what: str) -> None:
    diff = np.abs(theirs - ours)
    assert diff.max() <= MAX_REL * scale, f"{what}: max |diff| {diff.max():.4f}, logit std {scale:.3f}"
    assert diff.mean() <= MEAN_REL * scale, f"{what}: mean |diff| {diff.mean():.5f}, logit std {scale:.3f}"


def test_tolerance_rejects_a_wrong_graph(tmp_path):
    """Negative control: a relu^2 model written as if SiLU (what the exporter now refuses) is far outside."""
    src = load_source(_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", dict(TINY, hidden_act="relu2"),
                                  {}), tokenizer=TOKENIZER)
    runtime, _, _ = load_model(write_native(src, tmp_path / "m.safetensors"))
    src.model_cfg.hidden_act = "silu"  # lie to the writer
    gguf_path = write_gguf(src, tmp_path / "m.gguf")
    x = ids(seed=5, shape=(1, N_POS))
    with torch.no_grad():
        ours = runtime(x)[0].float().numpy()
    theirs, _, _ = _llama_scores(gguf_path, x[0].tolist())
    diff = np.abs(theirs - ours)
    assert diff.max() > MAX_REL * ours.std() or diff.mean() > MEAN_REL * ours.std()


def test_check_tool_runs_on_a_checkpoint(tmp_path):
    """tools/llama_cpp_check.py (the trained-model check of docs/RUNTIMES.md): a table row per prompt, and
    exit 0 where the greedy strings part only at near-ties of our logits."""
    import subprocess
    import sys

    ckpt = _checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", TINY, {})
    tool = Path(__file__).resolve().parents[3] / "tools" / "llama_cpp_check.py"
    proc = subprocess.run([sys.executable, str(tool), str(ckpt), "--qtypes", "tq2_0", "--new-tokens", "12",
                           "--prompt-lengths", "8", "--threads", "1", "--tokenizer", str(TOKENIZER)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tq2_0 |")]
    assert len(rows) == 6  # one prompt per novel of the shipped corpus
    assert all(row.split("|")[3].strip().endswith("/12") for row in rows)
