"""Find and check local data files before anything is loaded or tokenized.

`resolve_files(spec)` turns a file, directory or glob into typed `DataFile`s; `check_file`
rejects what would fail later, each with a one-line `ConfigError` naming the file and the fix:
empty files, binary or non-UTF-8 text, broken gzip, parquet without PAR1, a missing text column.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bitnet_train.config import ConfigError

# Suffix -> datasets builder. Order matters: longer suffixes first.
SUFFIXES: dict[str, str] = {
    ".txt.gz": "text", ".jsonl.gz": "json", ".json.gz": "json",
    ".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet",
}
SUPPORTED = ".txt, .jsonl, .json, .parquet (and .txt.gz, .jsonl.gz, .json.gz)"
# Text is checked for UTF-8 up to this many (decompressed) bytes per file; a later bad byte is
# still reported as a ConfigError when datasets reads the file.
CHECK_BYTES = 32 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One input file, with what identifies its content for caching."""

    path: Path
    builder: str  # "text", "json" or "parquet"
    size: int
    mtime_ns: int


def _builder_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, builder in SUFFIXES.items():
        if name.endswith(suffix):
            return builder
    return None


def resolve_files(spec: str) -> list[DataFile]:
    """A file, a directory (searched recursively) or a glob -> supported files, sorted by path."""
    path = Path(spec).expanduser()
    if path.is_file():
        if _builder_of(path) is None:
            raise ConfigError(f"data.files={spec!r} is not a supported file type; use {SUPPORTED}")
        candidates = [path]
    elif path.is_dir():
        candidates = [p for p in path.rglob("*") if p.is_file()]
    else:
        candidates = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p)]
    files = sorted({p.resolve() for p in candidates if _builder_of(p) is not None})
    if not files:
        raise ConfigError(f"data.files={spec!r} matches no {SUPPORTED} file; fix the path, directory or glob")
    out = []
    for p in files:
        st = p.stat()
        out.append(DataFile(p, _builder_of(p), st.st_size, st.st_mtime_ns))
    return out


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _guess_encoding(data: bytes) -> str:
    try:
        data.decode("cp1252")
        return "WINDOWS-1252"
    except UnicodeDecodeError:
        return "ISO-8859-1"


def _not_utf8(f: DataFile, offset: int, detail: str, enc: str) -> ConfigError:
    where = " of the decompressed text" if f.path.name.lower().endswith(".gz") else ""
    if where:
        inner = Path(f.path.name[:-3])
        fixed = f.path.with_name(f"{inner.stem}.utf8{inner.suffix}.gz")
        command = f"zcat {f.path} | iconv -f {enc} -t utf-8 | gzip > {fixed}"
    else:
        command = f"iconv -f {enc} -t utf-8 {f.path} > {f.path.with_name(f.path.stem + '.utf8' + f.path.suffix)}"
    return ConfigError(f"data.files: {f.path} is not UTF-8 text ({detail} at byte offset {offset}{where}); "
                       f"convert it: {command}")


def _check_text_bytes(f: DataFile) -> str:
    """Scan the start of a text file for NUL bytes and invalid UTF-8; return its first non-blank line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, head, found, eof = 0, b"", False, False
    try:
        with _open(f.path) as handle:
            while offset < CHECK_BYTES:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    eof = True
                    break
                if offset == 0 and chunk[:2] in (b"\xff\xfe", b"\xfe\xff"):
                    raise _not_utf8(f, 0, "UTF-16 byte order mark", "UTF-16")
                nul = chunk.find(b"\0")
                if nul >= 0:
                    raise ConfigError(
                        f"data.files: {f.path} looks binary, not text (NUL byte at byte offset {offset + nul}); "
                        "point data.files at text files only")
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    bad = offset - pending + err.start
                    byte = chunk[max(err.start - pending, 0)]
                    raise _not_utf8(f, bad, f"byte 0x{byte:02x}", _guess_encoding(chunk)) from None
                if not found:
                    head = chunk.lstrip()
                    found = bool(head)
                elif b"\n" not in head and len(head) < _CHUNK:
                    head += chunk
                offset += len(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ConfigError(
            f"data.files: {f.path} is not a valid gzip file ({err}); recompress it or drop the .gz suffix") from None
    if eof and not found:
        raise ConfigError(f"data.files: {f.path} is empty (no text); remove it or point data.files elsewhere")
    if eof:
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _not_utf8(f, offset - pending, "truncated character", "ISO-8859-1") from None
    return head.split(b"\n", 1)[0].decode("utf-8", errors="replace") if b"\n" in head or eof else ""


def _columns_error(field: str, path: Path, columns: list[str]) -> ConfigError:
    return ConfigError(
        f"data.text_field={field!r} is not a column of {path}; its columns are: {', '.join(columns) or '(none)'}; "
        "set data.text_field to the one holding the text")


def _check_json(f: DataFile, first_line: str, field: str) -> None:
    if not first_line.startswith("{"):
        return  # a JSON array or a pretty-printed file: columns are checked after loading
    try:
        record = json.loads(first_line)
    except json.JSONDecodeError:
        if f.path.name.lower().endswith((".jsonl", ".jsonl.gz")):
            raise ConfigError(
                f"data.files: {f.path} is not JSON lines (its first line is not a JSON object); "
                "write one JSON object per line") from None
        return  # a multi-line JSON document
    if field not in record:
        raise _columns_error(field, f.path, list(record))
    if record[field] is not None and not isinstance(record[field], str):
        raise ConfigError(
            f"data.text_field={field!r} in {f.path} holds {type(record[field]).__name__} values, not text; "
            "set data.text_field to a column of strings")


def _check_parquet(f: DataFile, field: str) -> None:
    with open(f.path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(f.size - 4, 0))
        tail = handle.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise ConfigError(
            f"data.files: {f.path} is not a parquet file (no PAR1 magic bytes); check the file or rename it "
            "with its real extension")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(f.path).metadata
    except (pa.ArrowException, OSError) as err:
        raise ConfigError(f"data.files: {f.path} is not a readable parquet file ({' '.join(str(err).split())[:200]}); "
                          "rewrite it or remove it") from None
    schema = meta.schema.to_arrow_schema()
    if field not in schema.names:
        raise _columns_error(field, f.path, list(schema.names))
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise ConfigError(
            f"data.text_field={field!r} in {f.path} has type {kind}, not text; set data.text_field to a string column")
    if meta.num_rows == 0:
        raise ConfigError(f"data.files: {f.path} is empty (0 rows); remove it or point data.files elsewhere")


def check_file(f: DataFile, text_field: str) -> None:
    """Raise ConfigError if `f` cannot be read as documents; reads at most CHECK_BYTES of text."""
    if f.size == 0:
        raise ConfigError(f"data.files: {f.path} is empty (0 bytes); remove it or point data.files elsewhere")
    if f.builder == "parquet":
        _check_parquet(f, text_field)
        return
    first_line = _check_text_bytes(f)
    if f.builder == "json":
        _check_json(f, first_line, text_field)
