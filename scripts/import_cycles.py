"""Import cycles among the modules of a package, counting every import statement: at module
level, inside functions and under `if TYPE_CHECKING:` alike.

    python scripts/import_cycles.py kdstudio/distill      # one package
    python scripts/import_cycles.py kdstudio              # the whole code base

Prints each cycle (a strongly connected group of modules, with the imports that tie it) and
exits 1 when there is one, 0 when there is none. Reads the source only (ast): nothing is
imported, so it runs without torch or Qt installed.

An edge `a -> b` is an import in module `a` of module `b` (`from p import name` counts as
`p.name` when that is a module, else as `p`). Importing a submodule runs its parent packages'
`__init__` too, but that is not counted as an import of them: a package re-exporting its
submodules is not a cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path


def module_files(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module under `package_dir` (a package folder)."""
    root = package_dir.resolve()
    top = root
    while (top.parent / "__init__.py").exists():
        top = top.parent
    base = top.parent
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the module's package, up `level - 1` more
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            source = ".".join([*anchor, node.module] if node.module else anchor)
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            yield sub if sub in known else source


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """{module: {imported module of the same set: line of the first such import}}."""
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py", known):
                while target and target not in known:  # a name inside a known module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(1000, 4 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a package folder, e.g. kdstudio/distill")
    args = parser.parse_args(argv)
    files = module_files(args.package)
    graph = import_graph(files)
    found = cycles(graph)
    for group in found:
        members = set(group)
        print(f"import cycle among {len(group)} modules:")
        for module in group:
            for target, line in sorted(graph[module].items()):
                if target in members:
                    rel = files[module].as_posix()
                    print(f"  {module} -> {target}  ({rel}:{line})")
    n = sum(len(e) for e in graph.values())
    print(f"{len(files)} modules, {n} imports among them, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
