"""Helpers for GUI tests and scripts (screenshots, benchmarks): isolated settings."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

ROOT = Path(__file__).resolve().parents[2]  # the source tree (for subprocesses in tests)


def prepare_app(settings_dir: str | Path):
    """The application with QSettings kept in `settings_dir` (never the user's own)."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(settings_dir))
    from kdstudio.gui.app import create_app

    return create_app(install_hooks=True)


def write_prompts(path: str | Path, n: int = 40) -> Path:
    """A small JSONL of arithmetic and string prompts with reference answers."""
    import json

    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            a, b = i % 7 + 1, i % 5 + 2
            if i % 3 == 0:
                row = {"prompt": f"What is {a} + {b}?", "response": f"The answer is {a + b}."}
            elif i % 3 == 1:
                word = "abcdefg"[: a % 5 + 2]
                row = {
                    "prompt": f"Reverse the string {word}.",
                    "response": f"Reversed: {word[::-1]}.",
                }
            else:
                row = {
                    "system": "You are terse.",
                    "prompt": f"Sort {b} {a} {a + b}.",
                    "response": " ".join(map(str, sorted([b, a, a + b]))),
                }
            f.write(json.dumps(row) + "\n")
    return path


def tiny_student(root: str | Path) -> Path:
    """A tiny Llama student with its own tokenizer (built offline, a few seconds)."""
    from kdstudio.demo.tiny import make_model, make_tokenizer

    root = Path(root)
    if (root / "student" / "config.json").exists():
        return root / "student"
    texts = [f"What is {a} + {b}? The answer is {a + b}." for a in range(10) for b in range(10)]
    tok = make_tokenizer(root / "tok", texts, vocab_size=400)
    return make_model(root / "student", tok, layers=2, hidden=32)


def studio_window(qtbot, ws, settings_dir: str | Path, *, size: tuple[int, int] | None = None):
    """Fixture body for GUI tests: a shown MainWindow on `ws`; on teardown its jobs are
    stopped (bounded) and the error hooks put back. Use with `yield from`."""
    from kdstudio.gui import collector, errors, workers
    from kdstudio.gui.main_window import MainWindow

    prepare_app(settings_dir)
    win = MainWindow(ws)
    qtbot.addWidget(win)
    if size:
        win.resize(*size)
    win.show()
    yield win
    workers.stop_all(60)
    errors.uninstall()
    collector.uninstall()


def key_chord(qtbot, widget, key, modifier) -> None:
    """Press `modifier`+`key` on `widget`, then let go of the modifier: after a bare
    keyClick the platform goes on believing it held, and every later selectRow() would
    extend the selection as with Ctrl held."""
    from PySide6.QtCore import Qt

    qtbot.keyClick(widget, key, modifier)
    for held in (Qt.Key.Key_Control, Qt.Key.Key_Shift, Qt.Key.Key_Alt):
        qtbot.keyRelease(widget, held, Qt.KeyboardModifier.NoModifier)
