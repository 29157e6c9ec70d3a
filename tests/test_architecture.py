"""The one rule: a Qt-free core under a thin GUI. The core imports and works with Qt absent."""

from __future__ import annotations

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
                if name.split(".")[0] in ("PySide6", "shiboken6", "pyqtgraph", "superqt"):
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
