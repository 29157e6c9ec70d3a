"""Unexpected exceptions, from any thread, reach a dialog with a "Copy details" button.

Expected problems (kdstudio's own errors, a full disk, a refused file) are shown inline by
the panel that hit them (`ErrorInfo.expected`, kdstudio.gui.problems); this module is for
everything else. `install()` hooks `sys.excepthook` and `threading.excepthook`; an exception
on another thread is handed to the GUI thread through a queued signal. A damaged workspace
database is not a bug either: it goes to the main window (`relay().damaged`), which offers
recovery instead of a crash report.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import traceback

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import QApplication, QWidget

from kdstudio.gui.widgets import ErrorDialog

DAMAGE_WORDS = ("malformed", "not a database", "disk image", "file is encrypted")


def is_damage(exc: BaseException) -> bool:
    """Whether SQLite says the workspace file itself is damaged (not a bug of ours)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc) for w in DAMAGE_WORDS)


class _Relay(QObject):
    """Lives on the GUI thread; `reported` and `damaged` are emitted from any thread."""

    reported = Signal(str, str)
    damaged = Signal(str)  # SQLite's message: the open workspace's database is damaged

    def __init__(self) -> None:
        super().__init__()
        self.reported.connect(self.show_dialog, Qt.ConnectionType.QueuedConnection)
        self.dialogs: list[ErrorDialog] = []

    @Slot(str, str)
    def show_dialog(self, summary: str, details: str) -> None:
        if QApplication.instance() is None:
            return
        parent = QApplication.activeWindow()
        dialog = ErrorDialog(summary, details, parent)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.finished.connect(self._forget)
        self.dialogs.append(dialog)
        dialog.open()  # window-modal, does not block the event loop

    @Slot()
    def _forget(self) -> None:
        self.dialogs = [d for d in self.dialogs if d.isVisible()]


_relay: _Relay | None = None


def relay() -> _Relay:
    global _relay
    if _relay is None:
        _relay = _Relay()
    return _relay


def report_unexpected(summary: str, details: str, parent: QWidget | None = None) -> None:
    """Show an unexpected failure (safe to call from any thread once `install` ran).

    The details also go to stderr at once, so nothing is lost if the window never shows.
    """
    sys.stderr.write(details if details.endswith("\n") else details + "\n")
    relay().reported.emit(summary, details)


def _excepthook(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        QApplication.quit()
        return
    if is_damage(exc):
        relay().damaged.emit(str(exc))
        return
    details = "".join(traceback.format_exception(exc_type, exc, tb))
    report_unexpected(f"{exc_type.__name__}: {exc}", details)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    if is_damage(args.exc_value):
        relay().damaged.emit(str(args.exc_value))
        return
    details = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    where = args.thread.name if args.thread is not None else "a background thread"
    report_unexpected(f"{args.exc_type.__name__} in {where}: {args.exc_value}", details)


_previous: tuple | None = None


def install() -> None:
    """Route uncaught exceptions (GUI thread and other threads) to the error dialog."""
    global _previous
    relay()  # created on the GUI thread
    if _previous is None:
        _previous = (sys.excepthook, threading.excepthook)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def uninstall() -> None:
    """Put back the hooks `install` replaced (tests, and embedding the window elsewhere)."""
    global _previous
    if _previous is not None:
        sys.excepthook, threading.excepthook = _previous
        _previous = None
