"""No auditor.py <-> bundle.py import circle: the bundle module imports nothing of the auditor's,
not even inside a function (it takes what it needs through a Protocol)."""

from __future__ import annotations

import ast

from tests.verifier_harness import REPO


def _imported_modules(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_bundle_does_not_import_the_auditor() -> None:
    assert "verifier.audit.auditor" not in _imported_modules("verifier/audit/bundle.py")
    assert "verifier.audit.bundle" in _imported_modules("verifier/audit/auditor.py")  # one way only
