"""The parts of verifier/ import one way, as verifier/__init__.py and each part's docstring say:
no part imports one it may not, the parts form no circle, no module imports another in a circle,
and the bundle module imports nothing of the auditor's (it takes what it needs through a
Protocol). Every import counts: inside a function, or for types only, too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.testdata import REPO_ROOT

VERIFIER = REPO_ROOT / "verifier"

# Each part of verifier/ (a subpackage, or a module at its top) and the other parts it may import:
# the "May import" of each part's docstring.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "accounting": frozenset(),
    "errors": frozenset(),
    "nonce": frozenset(),
    "access": frozenset({"errors"}),
    "tpm": frozenset({"errors", "nonce"}),
    "config": frozenset({"access", "accounting"}),
    "witness": frozenset({"config"}),
    "store": frozenset({"config", "nonce", "tpm", "witness"}),
    "audit": frozenset({"accounting", "config", "errors", "store", "tpm"}),
    "server": frozenset(
        {"accounting", "access", "audit", "config", "errors", "nonce", "store", "tpm", "witness"}
    ),
    "demo": frozenset({"server"}),
    "cli": frozenset(
        {
            "accounting",
            "access",
            "audit",
            "config",
            "demo",
            "errors",
            "nonce",
            "server",
            "store",
            "tpm",
            "witness",
        }
    ),
}

# What the accounting's docstring says it never touches: a store, the network, a clock, a process.
NOT_IN_ACCOUNTING = frozenset(
    {"asyncio", "grpc", "http", "psycopg", "socket", "sqlite3", "subprocess", "threading", "time"}
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO_ROOT / package).rglob("*.py"))}


VERIFIER_MODULES = _modules("verifier")


def _imports(path: Path) -> Iterator[str]:
    """Every module a file imports, wherever the import statement stands (a name imported from a
    package counts as its module when it is one)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in VERIFIER_MODULES else node.module


def _part(module: str) -> str:
    return module.split(".")[1]


def _verifier_imports(module: str) -> set[str]:
    return {
        name
        for name in _imports(VERIFIER_MODULES[module])
        if name.split(".")[0] == "verifier" and name != "verifier" and name != module
    }


def test_every_part_has_its_rules() -> None:
    parts = {p.stem for p in VERIFIER.glob("*.py") if p.stem != "__init__"}
    parts |= {p.parent.name for p in VERIFIER.glob("*/__init__.py")}
    assert parts == set(MAY_IMPORT)


def test_parts_import_only_the_parts_they_may() -> None:
    wrong = sorted(
        f"{module} imports {name}"
        for module in VERIFIER_MODULES
        if module != "verifier"
        for name in _verifier_imports(module)
        if _part(name) != _part(module) and _part(name) not in MAY_IMPORT[_part(module)]
    )
    assert wrong == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node, or with a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_parts_form_no_circle() -> None:
    assert _circles({part: set(allowed) for part, allowed in MAY_IMPORT.items()}) == []


def test_no_module_imports_another_in_a_circle() -> None:
    graph = {module: _verifier_imports(module) for module in VERIFIER_MODULES}
    assert _circles(graph) == []


def test_the_accounting_reads_no_store_network_or_clock() -> None:
    found = sorted(
        f"{module} imports {name}"
        for module, path in VERIFIER_MODULES.items()
        if module.startswith("verifier.accounting")
        for name in _imports(path)
        if name.split(".")[0] in NOT_IN_ACCOUNTING
    )
    assert found == []


def test_attest_and_agent_import_no_verifier_and_the_verifier_no_agent() -> None:
    found = sorted(
        f"{module} imports {name}"
        for package, banned in (
            ("attest", "verifier"),
            ("agent", "verifier"),
            ("verifier", "agent"),
        )
        for module, path in _modules(package).items()
        for name in _imports(path)
        if name.split(".")[0] == banned
    )
    assert found == []


def test_bundle_does_not_import_the_auditor() -> None:
    assert "verifier.audit.auditor" not in _verifier_imports("verifier.audit.bundle")
    assert "verifier.audit.bundle" in _verifier_imports("verifier.audit.auditor")  # one way only
