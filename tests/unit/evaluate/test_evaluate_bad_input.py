"""Bad input stops `python -m bitnet_train.evaluate` with one line and exit 2, before any compute."""

from __future__ import annotations

import shutil


from bitnet_train.evaluate.__main__ import main
from bitnet_train.evaluate import task_names


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    return err


def test_unknown_task_names_close_ones(capsys, sources):
    err = _run(capsys, [str(sources["checkpoint"]), "--tasks", "austen_clozee"])
    assert "unknown task 'austen_clozee'" in err and "austen_cloze" in err


def test_unknown_source_kind(capsys, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert "no known kind" in _run(capsys, [str(tmp_path / "model.onnx"), "--tasks", "austen_cloze"])
    (tmp_path / "empty").mkdir()
    assert "no known kind" in _run(capsys, [str(tmp_path / "empty"), "--tasks", "austen_cloze"])


def test_export_without_tokenizer(capsys, sources, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(sources["transformers"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (folder / name).unlink(missing_ok=True)
    assert "has no tokenizer files" in _run(capsys, [str(folder), "--tasks", "austen_cloze"])


def test_task_data_missing(capsys, sources, tmp_path, monkeypatch):
    monkeypatch.setattr(task_names, "TASKS_DIR", tmp_path)
    err = _run(capsys, [str(sources["checkpoint"]), "--tasks", "austen_novel"])
    assert "data file" in err and "make_eval_tasks.py" in err
