"""Turn `DataConfig` into a `datasets` dataset of documents with a single `text` column.

Local files (`data.files`, or the shipped Austen corpus when nothing is set) are resolved and
checked first (see files.py), then loaded with datasets' text/json/parquet builders; a hub name
(`data.dataset`) is loaded only when the hub can be reached or offline mode is set. Nothing
global is changed; `data.cache_dir` is passed to datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from bitnet_train.config import ConfigError, DataConfig
from bitnet_train.data.files import DataFile, check_file, resolve_files
from bitnet_train.paths import shipped_dir

SHIPPED_CORPUS = "austen"


@dataclass
class Documents:
    """Documents to tokenize, and what identifies them for the tokenization cache."""

    dataset: Any  # datasets.Dataset, or datasets.IterableDataset when streaming
    fingerprint: str
    description: str


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def _find_cause(err: BaseException | None, kind: type) -> BaseException | None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _text_column(ds: Any, field: str, where: str) -> Any:
    """Keep only `field`, renamed to `text`; check it exists and holds strings."""
    names = ds.column_names
    if names is None:  # a streaming dataset whose features are not known before reading
        first = next(iter(ds), None)
        if first is None:
            raise ConfigError(f"{where} has no rows; point data.files or data.dataset at some text")
        names = list(first)
    if field not in names:
        raise ConfigError(
            f"data.text_field={field!r} is not a column of {where}; its columns are: {', '.join(names)}; "
            "set data.text_field to the one holding the text")
    feature = ds.features.get(field) if ds.features is not None else None
    dtype = getattr(feature, "dtype", "string")
    if dtype not in ("string", "large_string", "string_view"):
        raise ConfigError(
            f"data.text_field={field!r} in {where} holds {feature} values, not text; "
            "set data.text_field to a string column")
    ds = ds.select_columns([field])
    return ds.rename_column(field, "text") if field != "text" else ds


def _load_builder(builder: str, files: list[DataFile], cfg: DataConfig) -> Any:
    import datasets

    kwargs: dict[str, Any] = {"sample_by": cfg.sample_by} if builder == "text" else {}
    if builder == "parquet":
        kwargs["columns"] = [cfg.text_field]
    try:
        ds = datasets.load_dataset(builder, data_files=[str(f.path) for f in files], split="train",
                                   cache_dir=cfg.cache_dir, streaming=cfg.streaming, **kwargs)
    except Exception as err:  # datasets wraps reader errors in DatasetGenerationError
        cause = _find_cause(err, UnicodeDecodeError)
        if cause is not None:
            raise ConfigError(
                f"data.files: a {builder} file is not UTF-8 beyond the part checked up front ({_one_line(cause)}); "
                "convert it with iconv -f <encoding> -t utf-8") from None
        raise ConfigError(f"data.files: datasets could not read the {builder} files ({_one_line(err)})") from None
    where = str(files[0].path) if len(files) == 1 else f"the {builder} files of data.files"
    return ds if builder == "text" else _text_column(ds, cfg.text_field, where)


def _local(cfg: DataConfig) -> Documents:
    spec = cfg.files if cfg.files is not None else str(shipped_dir() / SHIPPED_CORPUS)
    files = resolve_files(spec)
    for f in files:
        check_file(f, cfg.text_field)
    by_builder: dict[str, list[DataFile]] = {}
    for f in files:
        by_builder.setdefault(f.builder, []).append(f)
    parts = [_load_builder(b, fs, cfg) for b, fs in sorted(by_builder.items())]
    if len(parts) == 1:
        dataset = parts[0]
    else:
        import datasets

        dataset = datasets.concatenate_datasets(parts)
    identity = {"files": [[str(f.path), f.size, f.mtime_ns] for f in files],
                "sample_by": cfg.sample_by, "text_field": cfg.text_field}
    return Documents(dataset, _digest(identity), f"{len(files)} file(s) from {spec}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint accepts a TCP connection (no request is sent).

    Behind a proxy a direct connection proves nothing, so the probe is skipped (True).
    """
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _offline_mode() -> bool:
    import datasets

    flag = os.environ.get("HF_HUB_OFFLINE", os.environ.get("HF_DATASETS_OFFLINE", ""))
    return bool(datasets.config.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def _hub(cfg: DataConfig) -> Documents:
    import datasets

    name = f"data.dataset={cfg.dataset!r}"
    offline = _offline_mode()
    if not offline and not _hub_reachable():
        raise ConfigError(
            f"{name} needs the Hugging Face Hub, which cannot be reached from this machine; use data.files=PATH "
            "for local text, go online, or set HF_HUB_OFFLINE=1 to use a copy already in the datasets cache")
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split,
                                   streaming=cfg.streaming, cache_dir=cfg.cache_dir)
    except Exception as err:
        hint = ("it is not in the local datasets cache (offline mode); use data.files=PATH or go online"
                if offline else "check the name, data.dataset_config and data.split, or use data.files=PATH")
        raise ConfigError(f"{name} could not be loaded ({_one_line(err)}); {hint}") from None
    ds = _text_column(ds, cfg.text_field, name)
    identity = {"dataset": cfg.dataset, "config": cfg.dataset_config, "split": cfg.split,
                "text_field": cfg.text_field, "version": getattr(ds, "_fingerprint", None)}
    return Documents(ds, _digest(identity), f"{cfg.dataset} ({cfg.dataset_config or 'default'}, {cfg.split})")


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def load_documents(cfg: DataConfig) -> Documents:
    """The documents `cfg` names, checked; raises ConfigError with a one-line fix on bad input."""
    return _hub(cfg) if cfg.dataset is not None else _local(cfg)
