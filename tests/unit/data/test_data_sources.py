"""Document sources: every local format loads; every bad input is a one-line ConfigError."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bitnet_train.config import ConfigError
from bitnet_train.data import sources
from bitnet_train.data.sources import load_documents

DOCS = ["First document,\nover two lines.", "Second one.", "Third: café."]


def _texts(documents) -> list[str]:
    return [row["text"] for row in documents.dataset]


def _write(path: Path, kind: str, docs=DOCS, field: str = "text") -> Path:
    if kind == "txt":
        path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    elif kind == "txt.gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write("\n\n".join(docs) + "\n")
    elif kind in ("jsonl", "jsonl.gz"):
        lines = "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs))
        (gzip.open(path, "wt", encoding="utf-8") if kind.endswith(".gz") else open(path, "w")).write(lines)
    elif kind == "json":
        path.write_text(json.dumps([{field: d, "id": i} for i, d in enumerate(docs)], indent=1))
    elif kind == "parquet":
        pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path)
    return path


@pytest.mark.parametrize("kind", ["txt", "txt.gz", "jsonl", "jsonl.gz", "json", "parquet"])
def test_each_format_loads(tmp_path, make_cfg, kind):
    path = _write(tmp_path / f"docs.{kind}", kind)
    documents = load_documents(make_cfg(files=str(path)))
    assert documents.dataset.column_names == ["text"]
    texts = _texts(documents)
    assert [t.strip("\n") for t in texts] == DOCS


def test_text_field_other_name(tmp_path, make_cfg):
    path = _write(tmp_path / "docs.jsonl", "jsonl", field="content")
    assert _texts(load_documents(make_cfg(files=str(path), text_field="content"))) == DOCS


def test_sample_by_line_and_document(tmp_path, make_cfg):
    path = _write(tmp_path / "docs.txt", "txt")
    assert len(_texts(load_documents(make_cfg(files=str(path), sample_by="document")))) == 1
    lines = _texts(load_documents(make_cfg(files=str(path), sample_by="line")))
    assert lines[:2] == ["First document,", "over two lines."]


def test_directory_glob_and_mixed_formats(tmp_path, make_cfg):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    _write(folder / "a.txt", "txt", DOCS[:1])
    _write(folder / "sub" / "b.jsonl", "jsonl", DOCS[1:])
    (folder / "notes.md").write_text("ignored: not a data file")
    assert sorted(t.strip() for t in _texts(load_documents(make_cfg(files=str(folder))))) == sorted(DOCS)
    assert _texts(load_documents(make_cfg(files=str(folder / "**" / "*.jsonl")))) == DOCS[1:]


def test_cache_dir_is_used(tmp_path, make_cfg, cache_dir):
    load_documents(make_cfg(files=str(_write(tmp_path / "d.txt", "txt"))))
    assert list(Path(cache_dir).rglob("*.arrow"))


def test_shipped_corpus_is_the_default(make_cfg):
    documents = load_documents(make_cfg())
    assert "austen" in documents.description and documents.dataset.num_rows > 5000


def test_fingerprint_tracks_files_and_settings(tmp_path, make_cfg):
    path = _write(tmp_path / "d.txt", "txt")
    first = load_documents(make_cfg(files=str(path))).fingerprint
    assert load_documents(make_cfg(files=str(path))).fingerprint == first
    assert load_documents(make_cfg(files=str(path), sample_by="line")).fingerprint != first
    path.write_text("changed text\n")
    assert load_documents(make_cfg(files=str(path))).fingerprint != first


# --- errors -------------------------------------------------------------------------------


def _error(make_cfg, **cfg) -> str:
    with pytest.raises(ConfigError) as info:
        load_documents(make_cfg(**cfg))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_file_matches(tmp_path, make_cfg):
    message = _error(make_cfg, files=str(tmp_path / "nothing" / "*.txt"))
    assert "matches no" in message and ".jsonl" in message


def test_unsupported_file_type(tmp_path, make_cfg):
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.4")
    assert "not a supported file type" in _error(make_cfg, files=str(tmp_path / "book.pdf"))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, make_cfg, content):
    (tmp_path / "empty.txt").write_bytes(content)
    assert "is empty" in _error(make_cfg, files=str(tmp_path / "empty.txt"))


def test_empty_gz(tmp_path, make_cfg):
    with gzip.open(tmp_path / "e.txt.gz", "wb"):
        pass
    assert "is empty" in _error(make_cfg, files=str(tmp_path / "e.txt.gz"))


def test_broken_gz(tmp_path, make_cfg):
    (tmp_path / "b.txt.gz").write_bytes(b"plain text, not gzip")
    assert "not a valid gzip file" in _error(make_cfg, files=str(tmp_path / "b.txt.gz"))


def test_binary_file(tmp_path, make_cfg):
    (tmp_path / "b.txt").write_bytes(b"text then \x00\x01\x02 binary")
    message = _error(make_cfg, files=str(tmp_path / "b.txt"))
    assert "binary" in message and "offset 10" in message


def test_non_utf8_file_names_offset_and_iconv(tmp_path, make_cfg):
    (tmp_path / "latin.txt").write_bytes("Caf\u00e9 society".encode("cp1252"))
    message = _error(make_cfg, files=str(tmp_path / "latin.txt"))
    assert "not UTF-8" in message and "byte offset 3" in message and "0xe9" in message
    assert "iconv -f WINDOWS-1252 -t utf-8" in message


def test_non_utf8_inside_gz_after_first_chunk(tmp_path, make_cfg):
    data = b"a" * (1 << 20) + b"x\xff"
    (tmp_path / "late.txt.gz").write_bytes(gzip.compress(data))
    assert f"byte offset {(1 << 20) + 1}" in _error(make_cfg, files=str(tmp_path / "late.txt.gz"))


def test_utf16_file(tmp_path, make_cfg):
    (tmp_path / "u16.txt").write_bytes("hello".encode("utf-16"))
    assert "iconv -f UTF-16 -t utf-8" in _error(make_cfg, files=str(tmp_path / "u16.txt"))


def test_parquet_without_magic(tmp_path, make_cfg):
    (tmp_path / "fake.parquet").write_text("id,text\n1,hello\n")
    assert "PAR1" in _error(make_cfg, files=str(tmp_path / "fake.parquet"))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "json"])
def test_missing_text_field_lists_columns(tmp_path, make_cfg, kind):
    path = _write(tmp_path / f"d.{kind}", kind, field="body")
    message = _error(make_cfg, files=str(path))
    assert "data.text_field='text' is not a column" in message and "body" in message and "id" in message


def test_text_field_that_is_not_text(tmp_path, make_cfg):
    path = tmp_path / "n.jsonl"
    path.write_text('{"text": 5}\n')
    assert "not text" in _error(make_cfg, files=str(path))


def test_hub_name_offline(make_cfg, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_offline_mode", lambda: False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: False)
    message = _error(make_cfg, dataset="someone/some-corpus")
    assert "cannot be reached" in message and "data.files" in message and "go online" in message


def test_hub_name_not_cached_in_offline_mode(make_cfg, monkeypatch):
    monkeypatch.setattr(sources, "_offline_mode", lambda: True)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    message = _error(make_cfg, dataset="someone/not-cached-corpus")
    assert "not in the local datasets cache" in message and "data.files" in message
