"""Lists import cycles between the modules of flax_lr_callbacks (exit status 1 if any).

Every ``import``/``from ... import`` counts, also those inside functions (a deferred import
hides a cycle from Python but not from a reader). ``from pkg import name`` counts as an
import of ``pkg.name`` when that is a module, else of ``pkg``. Importing a submodule also
imports its packages' ``__init__``; package ``__init__`` files (pure re-exports) are left out
of the graph, so a cycle through a re-export does not count. Imports under
``if TYPE_CHECKING:`` never run and are left out too.

Usage: python scripts/import_cycles.py [package_dir]
"""

from __future__ import annotations

import ast
import pathlib
import sys


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    pkg = root.name
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((pkg,) + parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):  # drop `if TYPE_CHECKING:` bodies (annotations only)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                mod = f"{parent}.{node.module}" if node.module else parent
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(root: str = "flax_lr_callbacks") -> int:
    known = modules(pathlib.Path(root))
    inits = {n for n, p in known.items() if p.name == "__init__.py"}
    graph = {n: imports(n, p, known) - inits for n, p in known.items() if n not in inits}
    found = cycles(graph)
    edges = sum(len(v) for v in graph.values())
    print(f"{len(graph)} modules, {edges} imports, {len(found)} import cycles")
    for comp in found:
        print("  cycle:", " <-> ".join(comp))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
