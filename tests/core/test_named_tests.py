"""Every test the docs name exists where they say: a path under tests/ (README, docs/*.md), and each
`folder/test_x.py::test_name` of docs/hardening.md's tables (paths there are relative to tests/; a
`::test_name` alone is in the file named before it on its line). Tests move (issue 20 put them in
folders): the docs must move with them."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT, TESTS

pytestmark = pytest.mark.unit

DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PATH = re.compile(r"\btests/[\w/.-]*\w")
NAMED = re.compile(r"`((?:[a-z0-9_]+/)*test_\w+\.py)?(?:::(test_\w+))?[`\s]")


def exists(path: str) -> bool:
    """A file or folder, or a module's name (tests/support/stores.store_section)."""
    return (ROOT / path).exists() or (ROOT / f"{path.split('.')[0]}.py").exists()


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "decisions.md"], ids=lambda d: d.name)
def test_every_tests_path_in_the_docs_exists(doc):
    """decisions.md is a record: a path there is where the test was when the decision was taken."""
    missing = sorted({p for p in PATH.findall(doc.read_text()) if not exists(p)} - {"tests/artifacts"})
    assert missing == [], f"{doc.name} names what is not there: {missing}"


def test_every_test_hardening_md_names_exists():
    missing = []
    for line in (ROOT / "docs" / "hardening.md").read_text().splitlines():
        current = None
        for path, name in NAMED.findall(line):
            current = path or current
            if current is None:
                continue
            source = ROOT / current if current.startswith("tests/") else TESTS / current
            if not source.exists():
                missing.append(current)
            elif name and not re.search(rf"^(?:async )?def {name}\(", source.read_text(), re.M):
                missing.append(f"{current}::{name}")
    assert missing == []
