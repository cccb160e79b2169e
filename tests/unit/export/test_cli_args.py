"""The export command line refuses an output path that does not fit the format before loading anything."""

from __future__ import annotations

import pytest

from bitnet_train.config import ConfigError
from bitnet_train.export.__main__ import check_out, parse_args


@pytest.mark.parametrize("fmt,out,match", [
    ("native", "model.bin", "must end in .safetensors"),
    ("gguf", "model.safetensors", "must end in .gguf"),
])
def test_wrong_suffix(fmt, out, match):
    with pytest.raises(ConfigError, match=match):
        check_out(fmt, out)


def test_hf_needs_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="writes a folder"):
        check_out("hf", str(tmp_path / "file"))
    check_out("hf", str(tmp_path / "new_folder"))


def test_defaults():
    args = parse_args(["ckpt", "--format", "native", "--out", "m.safetensors"])
    assert (args.packing, args.gguf_type, args.dtype) == ("2bit", "tq2_0", "float32")
