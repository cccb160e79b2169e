"""The evaluation callback runs tasks and perplexity every N steps and at the end, logs them to every logger
of the trainer, and exposes the final figures for metrics.json; disabled (the shipped default) it does nothing."""

from __future__ import annotations

import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from bitnet_train.config import ConfigError
from bitnet_train.evaluate.callback import EvaluationCallback
from bitnet_train.evaluate.callback import evaluation_metrics
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.paths import conf_dir

pytestmark = pytest.mark.usefixtures("dynamo_disabled")
TINY = dict(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64)


class Recorder(pl.loggers.Logger):
    name, version = "recorder", "0"

    def __init__(self):
        super().__init__()
        self.logged = []

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def _loader():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 4096, (8, 17), generator=g)
    return torch.utils.data.DataLoader([{"input_ids": r[:-1], "labels": r[1:]} for r in ids], batch_size=2)



def test_runs_every_n_steps_logs_everywhere_and_exposes_final(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged.\n\nEmma Woodhouse, handsome, clever, and rich.\n")
    cb = EvaluationCallback(enabled=True, every_n_steps=2, tasks="austen_cloze", limit=2, text=[str(text)])
    rec, csv_logger = Recorder(), CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(max_steps=3, callbacks=[cb], logger=[rec, csv_logger], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    module = PretrainModule(TINY, {}, {})
    trainer.fit(module, _loader())
    assert [h["step"] for h in cb.history] == [2, 3]
    final = evaluation_metrics([cb])["evaluation"]
    assert final["step"] == 3 and 0 <= final["tasks"]["austen_cloze"]["acc"] <= 1
    assert final["perplexity"]["tokens"] > 0 and math.isfinite(final["perplexity"]["bits_per_byte"])
    steps = [s for s, m in rec.logged if "eval/austen_cloze/acc" in m and "eval/perplexity/loss" in m]
    assert steps == [2, 3]
    csv_logger.save()
    rows = list(csv.DictReader(open(csv_logger.log_dir + "/metrics.csv")))
    assert any(r.get("eval/perplexity/loss") for r in rows)
    assert module.training  # put back in train mode


def test_disabled_by_default_and_checked_when_enabled():
    spec = OmegaConf.load(conf_dir() / "callbacks" / "default.yaml")["evaluation"]
    assert spec["enabled"] is False
    assert evaluation_metrics([EvaluationCallback()]) == {}
    with pytest.raises(ConfigError, match="no tasks and no text"):
        EvaluationCallback(enabled=True)
    with pytest.raises(ConfigError, match="unknown task"):
        EvaluationCallback(enabled=True, tasks=["austen_clozz"])
