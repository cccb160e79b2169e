"""Each user mistake ends in one clear line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import pytest

from conftest import SMALL, run_cli


def _fails_cleanly(proc, *words: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    text = proc.stderr + proc.stdout
    for word in words:
        assert word in text, f"{word!r} not in:\n{text[-2000:]}"
    return text


def _error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture
def cli(tmp_path, data_cache):
    def run(*args: str):
        return run_cli([*SMALL, "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'run'}",
                        f"data.cache_dir={data_cache}", *args], cwd=tmp_path)
    return run


def test_unknown_top_level_key(cli):
    _fails_cleanly(cli("learning_rate=0.1"), "learning_rate")


def test_unknown_key_in_our_section(cli):
    proc = cli("+quant.wieght_scale=absmean")
    _fails_cleanly(proc, "quant.wieght_scale")
    assert "weight_scale" in _error_line(proc)


def test_invalid_choice(cli):
    proc = cli("quant.weight_scale=absmax")
    _fails_cleanly(proc)
    line = _error_line(proc)
    assert "quant.weight_scale" in line and "absmean" in line and "absmedian" in line


def test_missing_data_file(cli, tmp_path):
    proc = cli(f"data.files={tmp_path / 'nope.txt'}")
    _fails_cleanly(proc)
    assert "nope.txt" in _error_line(proc)


def test_empty_data_file(cli, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = cli(f"data.files={empty}")
    _fails_cleanly(proc)
    assert "empty" in _error_line(proc)


def test_binary_data_file(cli, tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    proc = cli(f"data.files={binary}")
    _fails_cleanly(proc)
    assert "UTF-8" in _error_line(proc)


def test_vocab_mismatch(cli):
    proc = cli("model.vocab_size=100")
    _fails_cleanly(proc)
    line = _error_line(proc)
    assert "model.vocab_size=100" in line and "4096" in line


def test_corrupted_checkpoint(cli, tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = cli(f"ckpt_path={bad}")
    _fails_cleanly(proc)
    assert "corrupted" in _error_line(proc)


def test_missing_checkpoint(cli, tmp_path):
    proc = cli(f"ckpt_path={tmp_path / 'missing.ckpt'}")
    _fails_cleanly(proc)
    assert "does not exist" in _error_line(proc)
