"""poetctl has no import cycle: no module imports, at load time, one that imports it back (issue 10)."""

from __future__ import annotations

import ast
from pathlib import Path

import poetctl

ROOT = Path(poetctl.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _load_time_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules imported when ``name`` loads: top-level statements, not TYPE_CHECKING blocks nor function bodies."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for n in body:
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                walk(n.orelse)
            elif isinstance(n, ast.If | ast.Try | ast.With):
                for part in ("body", "orelse", "finalbody"):
                    walk(getattr(n, part, []))
                for h in getattr(n, "handlers", []):
                    walk(h.body)
            elif isinstance(n, ast.Import):
                found.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                    base = ".".join(up + ([n.module] if n.module else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in n.names)

    walk(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def test_no_module_imports_itself_back() -> None:
    """Tarjan's strongly connected components of the load-time import graph are all single modules."""
    known = _modules()
    graph = {m: _load_time_imports(m, p, known) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert graph["poetctl.daemon.core"], "the walk must see imports (else it proves nothing)"
    assert cycles == []
