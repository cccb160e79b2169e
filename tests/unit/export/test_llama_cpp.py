"""Every GGUF variant the exporter writes, run in llama.cpp itself (llama-cpp-python): its logits at
every position of 200 tokens and its greedy tokens against our runtime (infer/, on the native export
of the same checkpoint).

llama.cpp quantizes activations its own way (8-bit blocks of 256 for TQ2_0/TQ1_0, of 32 for Q8_0,
where ours takes one absmax scale per token), so logits agree closely but not bit for bit: the
tolerance is stated on the logit scale (max |diff| <= 5% of the logits' standard deviation, mean
|diff| <= 1%). A wrong graph (relu^2 run as SiLU, a wrong RoPE layout, a missing scale) gives
differences of the order of the logits themselves, far outside it."""

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
from bitnet_train.paths import shipped_dir
from exporttest_helpers import TOKENIZER, ids

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama_cpp

N_POS, N_GREEDY = 200, 24


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


def _llama_scores(path: Path, tokens: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False)
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.reset()
    prompt = tokens[:8]
    llm.eval(prompt)
    greedy = []
    for _ in range(N_GREEDY):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    llm.close()
    return scores, greedy


@pytest.mark.parametrize("shape,arch,qtype", CASES, ids=["-".join(c) for c in CASES])
def test_llama_cpp_matches_our_runtime(checkpoint, tmp_path, shape, arch, qtype):
    model = dict(SHAPES[shape])
    if arch == "llama":
        model["tie_word_embeddings"] = False  # arch llama also carries an untied head
    quant = dict() if arch == "bitnet" else dict(norm="none")
    src = load_source(checkpoint(model, quant, seed=3), tokenizer=TOKENIZER)
    gguf_path = write_gguf(src, tmp_path / "m.gguf", qtype=qtype)
    runtime, _, _ = load_model(write_native(src, tmp_path / "m.safetensors"))
    x = ids(seed=5, shape=(1, N_POS))
    with torch.no_grad():
        ours = runtime(x)[0].float().numpy()
        ours_greedy = generate(runtime, x[:, :8], N_GREEDY)[0, 8:].tolist()
    theirs, their_greedy = _llama_scores(gguf_path, x[0].tolist())
    assert theirs.shape == ours.shape
    diff = np.abs(theirs - ours)
    scale = ours.std()
    assert diff.max() <= 0.05 * scale, f"max |diff| {diff.max():.4f}, logit std {scale:.3f}"
    assert diff.mean() <= 0.01 * scale, f"mean |diff| {diff.mean():.5f}, logit std {scale:.3f}"
    assert their_greedy == ours_greedy
