"""The package's shape (issue 10's done-when): no import cycle, no module over 600 lines, and every
call that renames, links, unlinks or locks spool files inside the filesystem backend package."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "poetctl"
MAX_LINES = 600
FS_BACKEND = PACKAGE / "backends" / "fs"
# (module, attribute) pairs that change or lock files by path: only the filesystem backend may call them.
SPOOL_CHANGING = {
    ("os", "rename"),
    ("os", "link"),
    ("os", "unlink"),
    ("os", "replace"),
    ("os", "remove"),
    ("fcntl", "flock"),
    ("fcntl", "lockf"),
    ("shutil", "rmtree"),
    ("shutil", "move"),
}
# Methods that change files whatever they are called on (Path, SpoolDir): ``x.unlink()``, ``x.rename(...)``.
SPOOL_CHANGING_METHODS = {"unlink", "rename", "rmdir", "hardlink_to", "link_to"}
WATCHED_MODULES = ("os", "fcntl", "shutil")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``poetctl.x.y``; a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: top level and inside top-level if/try (not functions,
    not ``if TYPE_CHECKING:``)."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body)
            stack.extend(node.orelse)
            stack.extend(node.finalbody)
            for h in node.handlers:
                stack.extend(h.body)


def resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package modules ``node`` imports (``from . import x`` names module x when it is one)."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
        return out
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in known:
            out.add(sub)
        elif target in known:
            out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        for node in module_level_imports(tree):
            deps |= resolve(name, path.name == "__init__.py", node, known)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are not edges of a cycle
        # unless they import back, which their own entries record.
        graph[name] = {d for d in deps if d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check itself can fail: a two-module cycle and a self-contained chain are told apart."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_walk_skips_type_checking_and_function_imports() -> None:
    """Only imports that run at import time count: TYPE_CHECKING blocks and function bodies do not."""
    tree = ast.parse(
        "import os\nif TYPE_CHECKING:\n    import poetctl.router\ndef f():\n    import poetctl.cli\n"
        "try:\n    import poetctl.event\nexcept ImportError:\n    pass\n"
    )
    names = sorted(a.name for n in module_level_imports(tree) for a in n.names)
    assert names == ["os", "poetctl.event"]


def test_no_import_cycle_in_the_package() -> None:
    """No two modules of poetctl import each other, directly or through others, at import time."""
    assert cycles(import_graph()) == []


def test_no_module_is_over_600_lines() -> None:
    """Every module of poetctl stays within 600 lines."""
    sizes = {name: len(p.read_text(encoding="utf-8").splitlines()) for name, p in modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def spool_changing_calls(path: Path) -> Iterator[tuple[int, str]]:
    """``os.rename(...)``, ``fcntl.flock(...)`` and the like, also through ``from os import rename`` or an alias."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases: dict[str, tuple[str, str]] = {}  # local name -> (module, attr), from 'from os import rename as r'
    modnames: dict[str, str] = {}  # local name -> module, from 'import os as o'
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in WATCHED_MODULES:
            for a in node.names:
                aliases[a.asname or a.name] = (node.module, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in WATCHED_MODULES:
                    modnames[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        key = None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modnames:
            key = (modnames[f.value.id], f.attr)
        elif isinstance(f, ast.Name) and f.id in aliases:
            key = aliases[f.id]
        if key in SPOOL_CHANGING:
            yield node.lineno, ".".join(key)  # type: ignore[arg-type]
        elif key is None and isinstance(f, ast.Attribute) and f.attr in SPOOL_CHANGING_METHODS:
            yield node.lineno, f".{f.attr}()"


# Modules that atomically replace a file the user named, outside any spool (never a spool file).
NOT_SPOOL_FILES = {
    "observability/backlog.py": "status --prometheus FILE: the node-exporter textfile, replaced atomically",
}


def test_the_call_finder_sees_aliases(tmp_path: Path) -> None:
    """os.rename, an aliased os, 'from fcntl import flock as lock', shutil.rmtree and path.unlink() are all found."""
    p = tmp_path / "m.py"
    p.write_text(
        "import os as o\nimport shutil\nfrom fcntl import flock as lock\no.rename('a', 'b')\nlock(3, 2)\n"
        "shutil.rmtree('x')\npath.unlink()\n'a'.replace('a', 'b')\nos_ok = 1\n"
    )
    assert sorted(c for _, c in spool_changing_calls(p)) == [".unlink()", "fcntl.flock", "os.rename", "shutil.rmtree"]


@pytest.mark.parametrize("rel", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")))
def test_files_are_renamed_linked_unlinked_and_locked_only_in_the_fs_backend(rel: str) -> None:
    """No module outside poetctl/backends/fs renames, links, unlinks, removes, deletes trees of or locks files."""
    path = PACKAGE / rel
    if FS_BACKEND in path.parents:
        return
    calls = list(spool_changing_calls(path))
    if rel in NOT_SPOOL_FILES:
        # Named exceptions write a file the user chose outside the spool; they stay few and said why.
        assert calls, f"{rel} no longer changes files: remove it from NOT_SPOOL_FILES"
        return
    assert calls == []
