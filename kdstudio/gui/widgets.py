"""Small widgets every panel uses: the inline message bar, the error dialog, formatting."""

from __future__ import annotations

import math
import time
import traceback

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

LEVEL_COLOURS = {"info": "#2f6fdb", "success": "#2e9b4f", "warning": "#c98a06", "error": "#d23c3c"}


def is_dark(widget: QWidget | None = None) -> bool:
    """Whether the palette in use is dark (light/dark follows the system palette)."""
    pal = widget.palette() if widget is not None else QApplication.palette()
    return pal.color(QPalette.ColorRole.Window).lightness() < 128


def tint(colour: str, widget: QWidget | None = None, alpha: float = 0.14) -> str:
    """`colour` blended over the window background: a soft fill that works light or dark."""
    pal = widget.palette() if widget is not None else QApplication.palette()
    base = pal.color(QPalette.ColorRole.Window)
    c = QColor(colour)
    mix = [
        round(a * alpha + b * (1 - alpha))
        for a, b in zip(c.getRgb()[:3], base.getRgb()[:3], strict=True)
    ]
    return QColor(*mix).name()


class MessageBar(QFrame):
    """An inline message in a panel: what is wrong, where, and (optionally) an action button.

    Expected problems (a missing key, a bad URL, an empty dataset) show here, never in a
    dialog. `action_triggered` fires when the optional button is clicked.
    """

    action_triggered = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MessageBar")
        self.level = "info"
        self._label = QLabel()
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._action = QPushButton()
        self._action.clicked.connect(self.action_triggered)
        self._action.hide()
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.clear)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addWidget(self._label, 1)
        row.addWidget(self._action)
        row.addWidget(close)
        self.hide()

    @property
    def text(self) -> str:
        return self._label.text()

    def show_message(self, text: str, level: str = "info", action: str | None = None) -> None:
        self.level = level
        colour = LEVEL_COLOURS.get(level, LEVEL_COLOURS["info"])
        self.setStyleSheet(
            f"#MessageBar {{ background: {tint(colour, self)}; border: 1px solid {colour};"
            " border-radius: 4px; }"
        )
        self._label.setText(text)
        self._action.setVisible(bool(action))
        if action:
            self._action.setText(action)
        self.show()

    def clear(self) -> None:
        self._label.setText("")
        self.hide()


class ErrorDialog(QDialog):
    """The unexpected: a summary, the full details, and a "Copy details" button."""

    def __init__(self, summary: str, details: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("kdstudio: something went wrong")
        self.details = details
        text = QLabel(
            f"<b>{_escape(summary)}</b><br>This was unexpected. Copy the details below into "
            "a bug report; your work so far is saved in the workspace."
        )
        text.setWordWrap(True)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box = QPlainTextEdit(details)
        box.setReadOnly(True)
        box.setMinimumSize(640, 260)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = buttons.addButton("Copy details", QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy_details)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(box, 1)
        layout.addWidget(buttons)

    def copy_details(self) -> None:
        QGuiApplication.clipboard().setText(self.details)
        self.copy_button.setText("Copied")


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape(text: str) -> str:
    return _escape(text)


def fmt_count(n: int | float | None) -> str:
    if n is None:
        return "–"
    return f"{int(n):,}"


def fmt_time(t: float | None) -> str:
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def fmt_number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e9:
        return f"{int(x):,}"
    return f"{x:.4g}"


Selection = QAbstractItemView.SelectionMode


def row_table(
    model, selection: QAbstractItemView.SelectionMode = Selection.SingleSelection
) -> QTableView:
    """A table of records as every panel shows them: whole rows, compact, no row numbers."""
    table = QTableView()
    table.setModel(model)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(selection)
    table.verticalHeader().hide()
    table.verticalHeader().setDefaultSectionSize(22)
    table.setWordWrap(False)
    return table


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.15)
    font.setBold(True)
    label.setFont(font)
    return label


def hint(text: str) -> QLabel:
    """A muted explanatory line under a control."""
    label = QLabel(text)
    label.setWordWrap(True)
    pal = label.palette()
    pal.setColor(QPalette.ColorRole.WindowText, pal.color(QPalette.ColorRole.PlaceholderText))
    label.setPalette(pal)
    return label


class Card(QFrame):
    """A framed group with a title, for a panel's sections."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(10, 8, 10, 10)
        if title:
            self.body.addWidget(heading(title))
