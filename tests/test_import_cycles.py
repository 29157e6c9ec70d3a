"""No import cycles in distill/, counting imports inside functions (scripts/import_cycles.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "import_cycles.py"


def _check(package: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK), str(package)], capture_output=True, text=True, cwd=ROOT
    )


def test_distill_has_no_import_cycle_counting_imports_inside_functions():
    out = _check(ROOT / "kdstudio" / "distill")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(", 0 cycles")


def test_the_check_finds_a_cycle_held_together_by_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")  # a re-export
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n\nB = 1\n")
    out = _check(pkg)
    assert out.returncode == 1
    assert "pkg.a -> pkg.sub.b" in out.stdout and "pkg.sub.b -> pkg.a" in out.stdout
    assert "import cycle among 2 modules" in out.stdout  # pkg.sub re-exporting b is not in it
