"""The implementations in tests/docs_impl/ are written from the docs alone: none imports the
project's own code, so what they agree with is what the docs say, not what the code does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOCS_IMPL = Path(__file__).resolve().parents[1] / "docs_impl"
PROJECT_PACKAGES = {"attest", "agent", "verifier", "tests", "bench", "scripts"}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import reaches into the project's tests
                roots.add("tests")
            elif node.module:
                roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(DOCS_IMPL.glob("*.py")), ids=lambda p: p.name)
def test_a_docs_implementation_imports_nothing_of_the_project(path: Path) -> None:
    assert imported_roots(path.read_text(encoding="utf-8")) & PROJECT_PACKAGES == set()


def test_the_check_sees_an_import_of_the_project() -> None:
    assert imported_roots(
        "from attest.envelope import pae\nimport verifier.cli\nfrom . import x"
    ) >= {
        "attest",
        "verifier",
        "tests",
    }
    assert imported_roots("import hashlib\nfrom pausewatch.v1 import bundle_pb2") == {
        "hashlib",
        "pausewatch",
    }
