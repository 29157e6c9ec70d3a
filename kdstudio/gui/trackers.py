"""The window's side of the experiment trackers (kdstudio.trackers).

- `TrackerChoice`: the Train panel's `run.report_to` editor, a check box per tracker; one
  that is not installed is shown greyed out with the command that installs it.
- `TensorBoard`: `tensorboard --logdir <workspace>/tensorboard` on a free loopback port, in
  a QProcess (the GUI never waits on it), opened in the browser once it answers; stopped
  when the window closes (`stop_all`).
"""

from __future__ import annotations

import socket
import sys
import weakref
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from kdstudio import trackers

START_TIMEOUT_S = 90.0  # TensorBoard reads every event file before it answers
POLL_MS = 250


class TrackerChoice(QWidget):
    """Check boxes for `run.report_to` (value()/set_value() for SectionForm)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QVBoxLayout(self)  # one under another: the form's column stays narrow
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.boxes: dict[str, QCheckBox] = {}
        for name in trackers.TRACKERS:
            box = QCheckBox(trackers.TITLES[name].replace("&", "&&"))  # no mnemonic
            if trackers.installed(name):
                box.setToolTip(f"Also send the run's metrics and config to {trackers.TITLES[name]}")
            else:
                box.setEnabled(False)
                box.setToolTip(f"Not installed: {trackers.install_hint(name)}")
            box.toggled.connect(self.changed)
            self.boxes[name] = box
            row.addWidget(box)

    def value(self) -> list[str]:
        return [name for name, box in self.boxes.items() if box.isChecked()]

    def set_value(self, value: list[str] | None) -> None:
        # a config may name a tracker that is not installed here: it stays checked (greyed),
        # so the run's TOML keeps it, and the run warns about it
        for name, box in self.boxes.items():
            box.setChecked(name in (value or []))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUNNING: weakref.WeakSet[TensorBoard] = weakref.WeakSet()


class TensorBoard(QObject):
    """One `tensorboard --logdir DIR` process for the window; `open()` starts it (or reuses
    it) and opens the browser once it answers."""

    opened = Signal(str)  # the URL, once TensorBoard answers and the browser was asked
    failed = Signal(str)  # why it did not start

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.process: QProcess | None = None
        self.logdir: Path | None = None
        self.port = 0
        self._waited = 0
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def open(self, logdir: Path) -> None:
        """Show `logdir` in TensorBoard: the running one when it shows the same folder."""
        if self.running and self.logdir == logdir:
            if not self._timer.isActive():
                self._show()
            return
        self.stop()
        self.logdir, self.port, self._waited = logdir, free_port(), 0
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.finished.connect(self._on_finished)
        args = ["-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(self.port)]
        self.process.start(sys.executable, [*args, "--host", "127.0.0.1"])
        _RUNNING.add(self)
        self._timer.start()

    @Slot()
    def _poll(self) -> None:
        """Wait for the port to answer (a refused connect returns at once on loopback)."""
        self._waited += POLL_MS
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.05).close()
        except OSError:
            if self._waited >= START_TIMEOUT_S * 1000:
                self._timer.stop()
                self.failed.emit(f"TensorBoard did not answer within {START_TIMEOUT_S:.0f} s")
                self.stop()
            return
        self._timer.stop()
        self._show()

    def _show(self) -> None:
        QDesktopServices.openUrl(QUrl(self.url))
        self.opened.emit(self.url)

    @Slot(int, QProcess.ExitStatus)
    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self._timer.isActive():  # it died before answering: say why
            self._timer.stop()
            output = bytes(self.process.readAll()).decode("utf-8", "replace").strip()
            tail = " ".join(output.splitlines()[-3:])[-400:]
            self.failed.emit(f"TensorBoard stopped (exit code {code}): {tail or 'no output'}")

    def stop(self) -> None:
        """End the process (terminate, then kill after 3 s)."""
        self._timer.stop()
        process, self.process = self.process, None
        if process is None:
            return
        process.finished.disconnect(self._on_finished)
        if process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()
            if not process.waitForFinished(3000):
                process.kill()
                process.waitForFinished(3000)
        process.deleteLater()
        _RUNNING.discard(self)


def stop_all() -> None:
    """Stop every TensorBoard this process started (the window is closing)."""
    for board in list(_RUNNING):
        board.stop()
