"""What the window shows when no workspace can be open: what is wrong, and the way out.

A workspace that is damaged, locked by another program or not openable never leaves the
person without a window: this page says what happened and offers to open another
workspace, create a new one, try again, or (when the database is damaged) recover what
is readable into a new file, keeping the damaged one (kdstudio.recovery).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from kdstudio.gui.widgets import MessageBar, escape, heading, hint

TITLES = {
    "damaged": "This workspace's database is damaged",
    "locked": "This workspace is locked by another program",
    "unopenable": "This workspace cannot be opened",
    "missing": "This workspace folder is missing",
    "none": "No workspace is open",
}


class WorkspaceProblemPage(QWidget):
    """The page in place of the panels; its buttons are signals for the main window."""

    open_requested = Signal()  # "Open another workspace…"
    create_requested = Signal()  # "Create a new workspace…"
    retry_requested = Signal()  # "Try again"
    recover_requested = Signal()  # "Recover into a new file…"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path: Path | None = None
        self.reason = "none"
        self.title = heading(TITLES["none"])
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = MessageBar(self)  # how a recovery went
        self.open_button = QPushButton("Open another workspace…")
        self.create_button = QPushButton("Create a new workspace…")
        self.retry_button = QPushButton("Try again")
        self.recover_button = QPushButton("Recover into a new file…")
        self.recover_button.setToolTip(
            "Copy every readable row into a new database and put it in place; the damaged "
            "file is kept beside it"
        )
        self.open_button.clicked.connect(self.open_requested)
        self.create_button.clicked.connect(self.create_requested)
        self.retry_button.clicked.connect(self.retry_requested)
        self.recover_button.clicked.connect(self.recover_requested)
        buttons = QHBoxLayout()
        for b in (self.recover_button, self.open_button, self.create_button, self.retry_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        box = QWidget()
        box.setMaximumWidth(760)
        inner = QVBoxLayout(box)
        inner.addWidget(self.title)
        inner.addWidget(self.text)
        inner.addWidget(self.status)
        inner.addLayout(buttons)
        self.recover_hint = hint(
            "Nothing in the workspace folder is changed until you choose to recover it: the "
            "recovered database is written to a new file first, and the damaged one is kept "
            "as kdstudio.damaged-<time>.sqlite."
        )
        inner.addWidget(self.recover_hint)
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(box, 3)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)
        self.show_problem("none", None, "Open a workspace folder, or create a new one.")

    def show_problem(self, reason: str, path: Path | None, text: str) -> None:
        """`reason`: damaged | locked | unopenable | none; `text` says what is wrong."""
        self.reason, self.path = reason, path
        self.title.setText(TITLES.get(reason, TITLES["unopenable"]))
        where = f"<p><b>{escape(str(path))}</b></p>" if path else ""
        self.text.setText(f"{where}<p>{escape(text)}</p>")
        self.recover_button.setVisible(reason == "damaged")
        self.recover_hint.setVisible(reason == "damaged")
        self.retry_button.setVisible(reason in ("locked", "unopenable", "damaged", "missing"))
        self.status.clear()
        self.set_busy(False)

    @Slot()
    def set_busy(self, busy: bool = True) -> None:
        for b in (self.recover_button, self.open_button, self.create_button, self.retry_button):
            b.setEnabled(not busy)
