"""The package lists every sub-package, and a normal (non-editable) install finds its configs and data."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bitnet_train").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


@pytest.mark.slow
def test_non_editable_install_composes_and_finds_shipped_data(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    code = (
        "import bitnet_train, sys\n"
        "from pathlib import Path\n"
        f"assert Path(bitnet_train.__file__).is_relative_to({str(target)!r}), bitnet_train.__file__\n"
        "from hydra import initialize_config_module, compose\n"
        "from bitnet_train.paths import shipped_dir\n"
        "with initialize_config_module('bitnet_train.conf', version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['+experiment=pretrain_tiny', 'out_dir=x'])\n"
        "assert cfg.model.hidden_size == 256\n"
        "assert sorted(p.name for p in (shipped_dir() / 'austen').iterdir())\n"
        "assert (shipped_dir() / 'tokenizer' / 'austen_sp4096.model').is_file()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
