"""A corpus with no blank lines (one paragraph, one document) trains: validation is split by blocks, and said so."""

from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path

from conftest import SMALL, compose_config

from bitnet_train.run import train

REPO = Path(__file__).resolve().parents[2]


def test_single_paragraph_corpus_trains(tmp_path, data_cache, caplog):
    text = gzip.decompress(sorted((REPO / "data" / "austen").glob("*.txt.gz"))[0].read_bytes()).decode("utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()][:1500]
    corpus = tmp_path / "one_paragraph.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")  # no blank line anywhere
    cfg = compose_config([*SMALL, f"out_dir={tmp_path / 'run'}", f"data.cache_dir={data_cache}",
                          f"data.files={corpus}", "trainer.max_steps=3", "trainer.val_check_interval=3",
                          "trainer.limit_val_batches=1", "callbacks.checkpoint.every_n_train_steps=3"])
    with caplog.at_level(logging.WARNING, logger="bitnet_train.data.datamodule"):
        metrics = train(cfg)
    assert metrics["steps"] == 3 and math.isfinite(metrics["val_loss"])
    data = metrics["data"]
    assert data["train_documents"] == data["val_documents"] == 1  # the one paragraph, cut into blocks
    assert data["val_blocks"] >= 1 and data["train_blocks"] > data["val_blocks"]
    assert any("split by blocks" in r.getMessage() and "data.sample_by=line" in r.getMessage() for r in caplog.records)
    json.loads((tmp_path / "run" / "metrics.json").read_text())
