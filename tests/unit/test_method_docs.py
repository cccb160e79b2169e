"""The code's method citations point into docs/METHODS.md, at headings that exist; nothing cites files outside."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITED = re.compile(r"docs/METHODS\.md#([a-z0-9-]+)")


def _anchors() -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for line in (REPO / "docs" / "METHODS.md").read_text().splitlines():
        if line.startswith("## "):
            slugs.add(re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-"))
    return slugs


def _sources():
    for folder in ("bitnet_train", "conf", "tests", "tools", "launch"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".sh", ".sbatch") and path.is_file():
                yield path


def test_every_cited_method_anchor_exists():
    anchors = _anchors()
    cited = {(path.relative_to(REPO), anchor) for path in _sources() for anchor in CITED.findall(path.read_text())}
    assert len(cited) >= 15
    missing = sorted((str(p), a) for p, a in cited if a not in anchors)
    assert not missing, missing


def test_no_citation_of_a_spec_outside_the_repository():
    offending = [str(p.relative_to(REPO)) for p in _sources() if re.search(r"\bSPEC\b", p.read_text())
                 and p.name != "test_method_docs.py"]
    assert not offending, offending


def test_readme_links_the_methods_and_each_method_folder():
    readme = (REPO / "README.md").read_text()
    assert "docs/METHODS.md" in readme
    for folder in ("quant", "schedules", "distill", "export", "kernels", "parallel", "tasks"):
        assert f"(bitnet_train/{folder}/" in readme or f"(bitnet_train/{folder})" in readme, folder
