"""The one rule: a Qt-free core under a thin GUI. The core imports and works with Qt absent."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_core_module_imports_with_qt_absent():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import importlib.abc

        class NoQt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("PySide6", "shiboken6", "pyqtgraph"):
                    raise ImportError(f"{name} is blocked: the core must not need Qt")
                return None

        sys.meta_path.insert(0, NoQt())
        import kdstudio
        mods = [m.name for m in pkgutil.walk_packages(kdstudio.__path__, "kdstudio.")
                if not m.name.startswith("kdstudio.gui")]
        for name in mods:
            importlib.import_module(name)
        from kdstudio.cli import main
        print(len(mods))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10


def test_front_end_files_import_heavy_libraries_only_inside_functions():
    offenders = []
    files = list((ROOT / "kdstudio" / "gui").rglob("*.py")) + [ROOT / "kdstudio" / "cli.py"]
    files += list((ROOT / "kdstudio" / "commands").rglob("*.py"))
    for path in files:
        for line in path.read_text().splitlines():
            if line.startswith(
                ("import torch", "from torch", "import transformers", "from transformers")
            ):
                offenders.append(f"{path.relative_to(ROOT)}: {line}")
    assert offenders == []


# -- import cycles ----------------------------------------------------------------------------


def import_graph(root: Path, package: str = "kdstudio") -> dict[str, set[str]]:
    """{module: the package modules it imports}, from the AST of every module, counting
    imports inside functions (they run, just later) and leaving out `if TYPE_CHECKING:`
    blocks (they never run)."""
    files = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        collector = _Imports(name, path.name == "__init__.py", set(files))
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        graph[name] = collector.found - {name}
    return graph


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module, self.is_package, self.known = module, is_package, known
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the package this module is in
            here = self.module.split(".")
            here = here if self.is_package else here[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
        for alias in node.names:  # `from pkg import module` imports the module itself
            full = f"{base}.{alias.name}"
            self._add(full if full in self.known else base)

    def _add(self, name: str) -> None:
        while name not in self.known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in self.known:
            self.found.add(name)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a -> b -> ... -> a) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the tree is shallow (a hundred modules)
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while not group or w != v:
                w = stack.pop()
                group.add(w)
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_around(group, graph) for group in groups]


def _path_around(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest cycle through the group's first module, for a readable failure."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & group):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_no_import_cycles_among_kdstudio_modules():
    cycles = import_cycles(import_graph(ROOT))
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_counts_imports_inside_functions_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "kdstudio"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from kdstudio.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def later():\n    from .. import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kdstudio.a\n"
    )
    (pkg / "sub" / "d.py").write_text("import kdstudio.c\n")
    graph = import_graph(tmp_path)
    assert graph["kdstudio.sub.b"] == {"kdstudio.a"}  # the relative import, inside a function
    assert graph["kdstudio.c"] == set()
    assert import_cycles(graph) == [["kdstudio.a", "kdstudio.sub.b", "kdstudio.a"]]


def test_only_file_dialogs_shows_a_file_dialog():
    """Qt's and GTK's dialogs open the files they list to sniff their type, which drops this
    process's SQLite locks on a workspace (docs/design-notes.md): kdstudio.gui.file_dialogs
    is the one way to ask for a path."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "kdstudio").rglob("*.py")
        if "QFileDialog" in path.read_text() and path.name != "file_dialogs.py"
    ]
    assert offenders == []
