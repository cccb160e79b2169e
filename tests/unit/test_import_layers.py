"""The package's import structure: the layer contracts of pyproject.toml hold, and no module imports itself back.

`make lint` runs import-linter with the contracts; this test runs the same tool, and checks independently
(with grimp, the graph library import-linter is built on) that the module graph has no cycle at all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]


def _lint_imports() -> list[str]:
    """import-linter's CLI (the dev extra installs it): missing, the test fails rather than skip."""
    found = str(Path(sys.executable).with_name("lint-imports"))
    assert Path(found).exists() or shutil.which("lint-imports"), "import-linter is not installed: pip install -e .[dev]"
    return [found if Path(found).exists() else shutil.which("lint-imports")]


def test_import_layer_contracts_hold():
    done = subprocess.run([*_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_anywhere_in_the_package():
    assert _cycles(grimp.build_graph("bitnet_train")) == []


def test_the_cycle_check_finds_a_circle(tmp_path, monkeypatch):
    """The check can fail: a two-module package importing each other is reported."""
    package = tmp_path / "circle_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle_pkg import b\n")
    (package / "b.py").write_text("from circle_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("circle_pkg")) == [["circle_pkg.a", "circle_pkg.b"]]
