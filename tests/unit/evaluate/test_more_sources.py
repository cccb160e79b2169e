"""Sources and entry points beyond the ternary checkpoint: a full-precision run is evaluated in full
precision (checked against transformers' Llama carrying the same weights), `--dataset` scores the same
documents as `--text`, and `python -m bitnet_train.evaluate.harness` is lm-eval's own command with our
model class registered (its results file agrees with our CLI)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM

from bitnet_train.evaluate.perplexity import perplexity
from bitnet_train.evaluate.perplexity import read_texts
from bitnet_train.evaluate.sources import load_evaluable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from exporttest_helpers import SMALL  # noqa: E402
from exporttest_helpers import TOKENIZER  # noqa: E402
from exporttest_helpers import save_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("dynamo_disabled")
DOCS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.",
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
        "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement."]


def _llama_loss(model, tok, texts) -> float:
    nll, n = 0.0, 0
    for text in texts:
        ids = [tok.eos_id] + tok.encode_batch([text])[0]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
        logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        nll -= float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        n += len(ids) - 1
    return nll / n


def test_full_precision_checkpoint_is_evaluated_in_full_precision(tmp_path):
    ckpt = tmp_path / "fp" / "checkpoints" / "last.ckpt"
    module = save_checkpoint(ckpt, dict(hidden_act="silu"), {"enabled": False, "norm": "none"})
    (tmp_path / "fp" / "config_resolved.yaml").write_text(f"data:\n  tokenizer: {TOKENIZER}\n")
    ev = load_evaluable(tmp_path / "fp")
    got = perplexity(ev, DOCS)

    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=SMALL["vocab_size"], hidden_size=SMALL["hidden_size"], intermediate_size=SMALL["intermediate_size"],
        num_hidden_layers=SMALL["num_hidden_layers"], num_attention_heads=SMALL["num_attention_heads"],
        num_key_value_heads=SMALL["num_key_value_heads"], max_position_embeddings=SMALL["max_position_embeddings"],
        rms_norm_eps=ev.model.config.rms_norm_eps, rope_theta=ev.model.config.rope_theta, hidden_act="silu",
        tie_word_embeddings=True)).eval()
    state = {k.removeprefix("model."): v for k, v in module.state_dict().items()}
    missing, unexpected = llama.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    llama.tie_weights()
    assert got["loss"] == pytest.approx(_llama_loss(llama, ev.tokenizer, DOCS), abs=2e-4)
    # and it is not the ternary network: quantizing the same weights changes the loss
    ternary = tmp_path / "b158.ckpt"
    save_checkpoint(ternary, dict(hidden_act="silu"), {"norm": "none"})
    q = perplexity(load_evaluable(ternary, tokenizer=TOKENIZER), DOCS)
    assert abs(q["loss"] - got["loss"]) > 1e-3


def test_dataset_scores_the_same_documents_as_text_files(sources, tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    with open(folder / "test.jsonl", "w") as f:
        for doc in DOCS:
            f.write(json.dumps({"body": doc}) + "\n")
    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS) + "\n")
    from_dataset = read_texts(dataset=str(folder), split="test", text_column="body")
    from_text = read_texts(files=[str(tmp_path / "docs.txt")])
    assert from_dataset == from_text == DOCS
    ev = load_evaluable(sources["checkpoint"])
    assert perplexity(ev, from_dataset) == perplexity(ev, from_text)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "TORCHDYNAMO_DISABLE": "1"})


def test_harness_command_is_lm_eval_with_our_model(sources, tmp_path):
    harness = _cli("-m", "bitnet_train.evaluate.harness", "--model", "bitnet_train",
                   "--model_args", f"path={sources['native']}", "--batch_size", "4", "--tasks", "austen_cloze",
                   "--limit", "6", "--output_path", str(tmp_path / "harness"), cwd=tmp_path)
    assert harness.returncode == 0, harness.stderr[-3000:]
    files = list((tmp_path / "harness").rglob("results_*.json"))
    assert len(files) == 1
    theirs = json.loads(files[0].read_text())["results"]["austen_cloze"]
    ours = _cli("-m", "bitnet_train.evaluate", str(sources["native"]), "--tasks", "austen_cloze", "--limit", "6",
                "--output-path", str(tmp_path / "ours"), cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr[-3000:]
    mine = json.loads(next((tmp_path / "ours").rglob("results_*.json")).read_text())["results"]["austen_cloze"]
    assert theirs["acc,none"] == mine["acc,none"]
    assert math.isclose(theirs["perplexity,none"], mine["perplexity,none"], rel_tol=1e-6)


def test_checkpoint_is_evaluated_at_its_lambdas_and_schedule_step(tmp_path):
    """Quantization strength 0 (a 16-bit phase of a continual run) is evaluated as the run computed it:
    in full precision, equal to the same weights with quantization off; past the transition, ternary."""
    fp = tmp_path / "fp.ckpt"
    save_checkpoint(fp, {}, {"enabled": False}, seed=3)
    reference = perplexity(load_evaluable(fp, tokenizer=TOKENIZER), DOCS)["loss"]
    zero = tmp_path / "zero" / "checkpoints" / "last.ckpt"
    save_checkpoint(zero, {}, {"weight_lambda": 0.0, "activation_lambda": 0.0, "norm": "none"}, seed=3)
    (tmp_path / "zero" / "config_resolved.yaml").write_text(f"data:\n  tokenizer: {TOKENIZER}\n")
    assert perplexity(load_evaluable(tmp_path / "zero"), DOCS)["loss"] == pytest.approx(reference, abs=1e-5)

    run = tmp_path / "continual"
    ckpt = run / "checkpoints" / "last.ckpt"
    save_checkpoint(ckpt, {}, {"norm": "none"}, seed=3)
    (run / "config_resolved.yaml").write_text(f"data:\n  tokenizer: {TOKENIZER}\ntrainer:\n  max_steps: 10\n"
                                              "schedule:\n  at: 0.5\n")
    obj = torch.load(ckpt, weights_only=False)
    losses = {}
    for step in (3, 5):
        obj["global_step"] = step
        torch.save(obj, ckpt)
        losses[step] = perplexity(load_evaluable(run), DOCS)["loss"]
    assert losses[3] == pytest.approx(reference, abs=1e-5)  # before the switch at step 5: 16-bit
    assert abs(losses[5] - reference) > 1e-3  # from it on: ternary
