"""The window keeps up with its workspace: changes by other processes show within a second.

`WorkspaceWatcher` asks SQLite for `PRAGMA data_version` on the GUI thread every
POLL_MS while the window is on screen. The number changes when any other connection (the
CLI, `kdstudio demo`, a torchrun job, this window's own worker threads) commits, and
reading it touches no table: SQLite answers from the WAL index in shared memory. When it
changes, the main window has the panel on screen re-read the workspace, and the others
when they are next shown.

`DemoBanner` shows what a `kdstudio demo` running beside the window is doing (its step and
progress, which the demo keeps in demo/status.json) and, once it is complete, its result.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from kdstudio.formatting import duration
from kdstudio.gui.widgets import LEVEL_COLOURS, LEVEL_FILLS, is_dark
from kdstudio.workspace import Workspace, WorkspaceClosed

POLL_MS = 400  # changes show within POLL_MS plus one panel refresh: well under a second
REFRESH_BUDGET = 0.05  # a panel's re-reads take at most this share of the GUI thread


class WorkspaceWatcher(QObject):
    """Emits `changed` when another connection committed to the workspace being watched.

    `damaged` carries SQLite's message when even this cheap question fails (the file was
    damaged or replaced under the window)."""

    changed = Signal()
    damaged = Signal(str)

    def __init__(self, window: QWidget, interval_ms: int = POLL_MS) -> None:
        super().__init__(window)
        self.window = window
        self.ws: Workspace | None = None
        self.version: int | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)
        self.timer.start()

    def watch(self, ws: Workspace | None) -> None:
        self.ws, self.version = ws, None
        self.check()

    @Slot()
    def check(self) -> None:
        ws = self.ws
        if ws is None or ws.closed or not self.window.isVisible() or self.window.isMinimized():
            return
        try:
            version = ws.data_version()
        except WorkspaceClosed:
            return
        except sqlite3.DatabaseError as exc:
            self.damaged.emit(str(exc))
            return
        if version != self.version:
            first = self.version is None
            self.version = version
            if not first:
                self.changed.emit()


class RefreshPacer:
    """Re-reads a panel at most so often that re-reading takes at most REFRESH_BUDGET of the
    time: a panel whose refresh costs 30 ms is re-read at most every 0.6 s, one costing
    200 ms (a huge collection) every 4 s, while a collection writes many rows a second."""

    def __init__(self, budget: float = REFRESH_BUDGET, min_gap_s: float = 0.0) -> None:
        self.budget, self.min_gap_s = budget, min_gap_s
        self.cost: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def due(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        gap = max(self.min_gap_s, self.cost.get(key, 0.0) / self.budget)
        return now - self.last.get(key, -1e9) >= gap

    def record(self, key: str, started: float, ended: float) -> None:
        self.cost[key], self.last[key] = ended - started, ended

    def forget(self) -> None:
        self.cost.clear()
        self.last.clear()


class DemoBanner(QWidget):
    """One line over the panels while the workspace holds a demo: step, progress, result.

    It looks at demo/status.json once a second (one stat; the file is read only when it
    changed, or while the demo runs, to notice a process that died)."""

    result_requested = Signal()  # "Show the result"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("DemoBanner")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setMinimumWidth(220)
        self.bar.setMaximumWidth(320)
        self.bar.setTextVisible(True)
        self.result_button = QPushButton("Show the result")
        self.result_button.clicked.connect(self.result_requested)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 10, 6)
        row.addWidget(self.label, 1)
        row.addWidget(self.bar)
        row.addWidget(self.result_button)
        self.root: Path | None = None
        self.status = None
        self._seen: float | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self.check)
        self.timer.start()
        self.hide()

    def watch(self, root: Path | None) -> None:
        self.root, self._seen, self.status = root, None, None
        self.hide()
        self.check()

    @Slot()
    def check(self) -> None:
        from kdstudio.demo import DEMO_FOLDER, STATUS_FILE

        if self.root is None:
            return
        try:
            mtime = (self.root / DEMO_FOLDER / STATUS_FILE).stat().st_mtime
        except OSError:
            return
        running = self.status is not None and self.status.state == "running"
        if mtime != self._seen or running:
            self._seen = mtime
            self.update_now()

    def update_now(self) -> None:
        from kdstudio.demo import demo_status

        self.status = status = demo_status(self.root) if self.root is not None else None
        if status is None:
            self.hide()
            return
        level = {"complete": "success", "failed": "error"}.get(status.state, "info")
        fill, colour = LEVEL_FILLS[level][is_dark(self)], LEVEL_COLOURS[level]
        self.setStyleSheet(
            f"#DemoBanner {{ background: {fill}; border-bottom: 1px solid {colour}; }}"
        )
        self.label.setText(banner_text(status))
        progress = status.progress if status.state == "running" else None
        self.bar.setVisible(progress is not None)
        if progress is not None:
            done, total, unit = progress
            self.bar.setRange(0, max(total or 0, 0))
            self.bar.setValue(min(done, total) if total else 0)
            self.bar.setFormat(f"{done:,} / {total:,} {unit}s" if total else f"{done:,} {unit}s")
        self.result_button.setVisible(status.state == "complete")
        self.show()


def banner_text(status) -> str:
    """The banner's words for a kdstudio.demo.DemoStatus."""
    if status.state == "complete":
        seconds = (status.result or {}).get("seconds")
        took = f" in {duration(seconds)}" if seconds else ""
        return f"<b>Demo complete</b>{took}: {status.accuracy_line()}."
    step = status.step.strip() or "its first step"
    if status.state == "running":
        return f"<b>Demo running</b> (in the terminal that opened this window): {step}"
    if status.state == "stopped":
        return (
            f"<b>Demo stopped</b> at {step}; what is done is kept. Run "
            "<code>kdstudio demo</code> again to continue it."
        )
    if status.state == "failed":
        return f"<b>Demo failed</b> at {step}: {status.message}"
    return (
        f"<b>Demo not running</b>: its process ended at {step}, "
        f"{duration(time.time() - status.t)} ago. Run <code>kdstudio demo</code> again to "
        "continue it."
    )
