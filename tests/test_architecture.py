"""The package layout holds: each package imports only what
docs/ARCHITECTURE.md allows, no module imports itself back through others
(no import circles, counting imports inside functions; annotations-only
imports under TYPE_CHECKING do not run and do not count), and no module or
class in jupiterd/ grows past the size a newcomer can read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jupiterd"

# What each package may import from jupiterd (besides itself and the
# top-level ``jupiterd`` for ``__version__``). Mirrors docs/ARCHITECTURE.md.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "core": {"config"},
    "state": {"config", "core"},
    "telemetry": {"config", "core"},
    "aws": {"config", "core", "state", "telemetry"},
    "runtime": {"config", "core", "state", "telemetry", "aws"},
    "cli": {"config", "core", "state", "telemetry", "aws", "runtime", "sandbox"},
    "sandbox": {"config", "core", "state", "telemetry", "aws", "runtime", "cli"},
}

MODULE_LINES = 450  # "about 400"
CLASS_LINES = 330  # "about 300"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(name: str, path: Path, known: set[str], *, typing: bool = True) -> set[str]:
    """Every jupiterd module ``name`` imports, at module level or inside a
    function (and under ``TYPE_CHECKING`` unless ``typing`` is false),
    resolved to the longest known module name."""
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if typing else _type_only(tree)
    base = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jupiterd":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            if module.split(".")[0] != "jupiterd":
                continue
            for alias in node.names:  # `from jupiterd.x import y` may name module y
                sub = f"{module}.{alias.name}"
                add(sub if sub in known else module)
    return found


def _graph(*, typing: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known, typing=typing) for name, path in modules.items()}


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None  # jupiterd itself, and `python -m jupiterd`
    return parts[1]


def test_every_package_is_in_the_rules() -> None:
    packages = {_package_of(m) for m in _modules()} - {None}
    assert packages == set(ALLOWED), "add the package to ALLOWED and docs/ARCHITECTURE.md"


def test_packages_import_only_what_the_architecture_allows() -> None:
    wrong = []
    for module, imports in _graph().items():
        pkg = _package_of(module)
        if pkg is None:
            continue
        for target in imports:
            other = _package_of(target)
            if other is not None and other != pkg and other not in ALLOWED[pkg]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_core_does_no_io() -> None:
    """The pure core reads no files, sockets or clocks of its own."""
    banned = {"asyncio", "socket", "boto3", "botocore", "aiohttp", "subprocess", "structlog"}
    for name, path in _modules().items():
        if _package_of(name) != "core":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & banned, f"{name} imports {roots & banned}"


def test_no_import_circles() -> None:
    """Imports that run: a part of the supervisor may name the Supervisor
    in its annotations (under TYPE_CHECKING) without importing it."""
    graph = _graph(typing=False)
    # A package's __init__ re-exporting its own submodules is not a circle:
    # only edges that leave the importing module's own package tree count
    # back into it.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue  # a module importing its own package's __init__
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert real == [], " ; ".join(" -> ".join(c) for c in real)


# Protocol stand-ins: one long sequence of a real protocol, read in order.
SIZE_EXCEPTIONS = ("jupiterd.sandbox.peers.",)


def _sizes() -> list[tuple[str, str, int]]:
    out = []
    for name, path in _modules().items():
        if name.startswith(SIZE_EXCEPTIONS):
            continue
        text = path.read_text()
        out.append(("module", name, text.count("\n")))
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                out.append(("class", f"{name}.{node.name}", length))
    return out


@pytest.mark.parametrize(("what", "limit"), [("module", MODULE_LINES), ("class", CLASS_LINES)])
def test_nothing_grows_past_a_readable_size(what: str, limit: int) -> None:
    big = [f"{n} ({lines} lines)" for w, n, lines in _sizes() if w == what and lines > limit]
    assert big == [], f"split these along their seams (docs/ARCHITECTURE.md): {big}"


def test_the_rules_see_imports() -> None:
    """The checker is not blind: known edges are found."""
    graph = _graph()

    def edges(prefix: str) -> set[str]:
        return {t for m, ts in graph.items() if m.startswith(prefix) for t in ts}

    assert "jupiterd.core.types" in edges("jupiterd.core.health")
    assert any(t.startswith("jupiterd.config") for t in edges("jupiterd.runtime.supervisor"))
    assert "jupiterd.cli.common" in edges("jupiterd.cli.ops")
