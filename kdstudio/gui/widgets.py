"""Small widgets every panel uses: the inline message bar, the error dialog, formatting."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QGuiApplication, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

LEVEL_COLOURS = {"info": "#2f6fdb", "success": "#2e9b4f", "warning": "#c98a06", "error": "#d23c3c"}
# The message bar's fill per kind, on a light and on a dark palette: fixed colours, so a
# message never takes on the tint of the one before it (a fill blended over the widget's
# own palette did, once a style sheet had coloured that palette).
LEVEL_FILLS = {
    "info": ("#e6eefc", "#1f3050"),
    "success": ("#e3f3e8", "#1d3a26"),
    "warning": ("#fbf0d9", "#43340f"),
    "error": ("#fbe3e3", "#4a1f1f"),
}


def is_dark(widget: QWidget | None = None) -> bool:
    """Whether the palette in use is dark (light/dark follows the system palette)."""
    pal = widget.palette() if widget is not None else QApplication.palette()
    return pal.color(QPalette.ColorRole.Window).lightness() < 128


class MessageBar(QFrame):
    """An inline message in a panel: what is wrong, where, and (optionally) an action button.

    Expected problems (a missing key, a bad URL, an empty dataset) show here, never in a
    dialog. Each kind (info, success, warning, error) has one fixed colour. The bar keeps
    its place when empty (`lines` lines of text), so a message appearing or going never
    moves what is below it; a longer message is elided, whole in the tooltip. With
    `overlay`, it floats over the top of its parent instead of taking a place in a layout
    (the window's own bar, for the rare message about the workspace itself).
    `action_triggered` fires when the optional button is clicked.
    """

    action_triggered = Signal()

    def __init__(
        self, parent: QWidget | None = None, *, overlay: bool = False, lines: int = 2
    ) -> None:
        super().__init__(parent)
        self.setObjectName("MessageBar")
        self.level = "info"
        self.overlay, self.lines = overlay, lines
        self._text = ""
        self._label = QLabel()
        self._label.setWordWrap(True)
        self._label.setTextFormat(Qt.TextFormat.PlainText)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._action = QPushButton()
        self._action.clicked.connect(self.action_triggered)
        self._action.hide()
        self._close = QToolButton()
        self._close.setText("✕")
        self._close.setAutoRaise(True)
        self._close.setToolTip("Dismiss")
        self._close.clicked.connect(self.clear)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 4, 6, 4)
        row.addWidget(self._label, 1)
        row.addWidget(self._action)
        row.addWidget(self._close)
        self.setFixedHeight(self._label.fontMetrics().lineSpacing() * lines + 12)
        self._style()
        # The fill follows the theme. A bar inside a window hears no palette event when the
        # application's palette changes (its own style sheet sets its palette, and only
        # windows get ApplicationPaletteChange), so it listens to the application itself.
        app = QGuiApplication.instance()
        if app is not None:
            app.paletteChanged.connect(self._style)
        if overlay:
            self.hide()
            if parent is not None:
                parent.installEventFilter(self)

    @property
    def text(self) -> str:
        """The whole message (the bar may show it elided)."""
        return self._text

    def show_message(self, text: str, level: str = "info", action: str | None = None) -> None:
        self.level = level if level in LEVEL_FILLS else "info"
        self._text = text
        self._style()
        self._action.setVisible(bool(action))
        if action:
            self._action.setText(action)
        self._render()
        if self.overlay:
            self._place()
            self.show()
            self.raise_()

    def clear(self) -> None:
        self._text = ""
        self._action.hide()
        self._style()
        self._render()
        if self.overlay:
            self.hide()

    def _style(self) -> None:
        """The fill and border of the current kind, or nothing at all when empty."""
        self._close.setVisible(bool(self._text))
        sheet = "#MessageBar { background: transparent; border: none; }"
        if self._text:
            light, dark = LEVEL_FILLS[self.level]
            sheet = (
                f"#MessageBar {{ background: {dark if is_dark() else light}; "
                f"border: 1px solid {LEVEL_COLOURS[self.level]}; border-radius: 4px; }}"
            )
        if self.styleSheet() != sheet:  # setting it again would restyle (and loop here)
            self.setStyleSheet(sheet)

    def _render(self) -> None:
        """The message, cut to the lines the bar has (at a word), whole in the tooltip."""
        shown = elide_lines(self._text, self._label.fontMetrics(), self._label.width(), self.lines)
        self._label.setText(shown)
        self._label.setToolTip(self._text if shown != self._text else "")

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._render()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        # getattr: Qt may still call a filter whose Python side is being torn down
        overlay = getattr(self, "overlay", False)
        if overlay and obj is self.parent() and event.type() == QEvent.Type.Resize:
            self._place()
        return False

    def _place(self) -> None:
        """As an overlay: across the top of the parent, inside its margins."""
        parent = self.parentWidget()
        if parent is not None:
            self.setGeometry(10, 6, max(100, parent.width() - 20), self.height())


def elide_lines(text: str, metrics, width: int, lines: int) -> str:
    """`text` cut at a word (with "…") so that, wrapped to `width`, it takes at most
    `lines` lines; whole when it fits."""
    if not text or width <= 0:
        return text
    flags = int(Qt.TextFlag.TextWordWrap)
    limit = metrics.lineSpacing() * lines + 1

    def fits(candidate: str) -> bool:
        return metrics.boundingRect(0, 0, width, 100_000, flags, candidate).height() <= limit

    if fits(text):
        return text
    words = text.split(" ")
    lo, hi = 0, len(words)  # the most words that fit, with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(" ".join(words[:mid]) + " …"):
            lo = mid
        else:
            hi = mid - 1
    return (
        " ".join(words[:lo]) + " …"
        if lo
        else metrics.elidedText(text, Qt.TextElideMode.ElideRight, width)
    )


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


class Hint(QLabel):
    """A muted explanatory line under a control: the text takes the palette's placeholder
    colour, and takes it again when the palette changes (a dark theme chosen while the
    window is open), so the hint never stays a light theme's grey on a dark background."""

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self._mute()

    def _mute(self) -> None:
        pal = self.palette()
        muted = pal.color(QPalette.ColorRole.PlaceholderText)
        if pal.color(QPalette.ColorRole.WindowText) != muted:  # no-op when it is already
            pal.setColor(QPalette.ColorRole.WindowText, muted)
            self.setPalette(pal)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._mute()


def hint(text: str) -> QLabel:
    """A muted explanatory line under a control."""
    return Hint(text)


class FieldNote(QLabel):
    """A problem with one field, said under it in its level's colour while it lasts
    ("folder … does not exist"); hidden when there is none."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.hide()

    def set_note(self, text: str | None, level: str = "error") -> None:
        self.setText(text or "")
        self.setStyleSheet(f"color: {LEVEL_COLOURS[level]}")
        self.setVisible(bool(text))


class Card(QFrame):
    """A framed group with a title, for a panel's sections."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(10, 8, 10, 10)
        if title:
            self.body.addWidget(heading(title))


class PathPicker(QWidget):
    """A path field with a Browse button: a folder, or with `files` (a file-dialog filter
    such as "Python (*.py)") a file. `value()`/`set_value()` for SectionForm. With `problem`
    (path -> what is wrong with it, or None: a few stat calls, so on every keystroke) what is
    wrong with the path typed ("folder … does not exist") shows under it at once."""

    def __init__(
        self,
        title: str,
        *,
        files: str | None = None,
        placeholder: str = "",
        problem: Callable[[str], str | None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title, self.files, self.problem = title, files, problem
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        self.note = FieldNote()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.edit, 1)
        row.addWidget(browse)
        column.addLayout(row)
        column.addWidget(self.note)
        self.textChanged = self.edit.textChanged
        if problem is not None:
            self.edit.textChanged.connect(self.check)

    def check(self) -> str | None:
        """What is wrong with the path (shown under the field), or None."""
        problem = self.problem(self.value()) if self.problem and self.value() else None
        self.note.set_note(problem[:1].upper() + problem[1:] + "." if problem else None)
        return problem

    def browse(self) -> None:
        from pathlib import Path

        from kdstudio.gui import file_dialogs

        start = self.edit.text() or str(Path.home())
        if self.files is None:
            chosen = file_dialogs.existing_folder(self, self.title, start)
        else:
            chosen = file_dialogs.open_file(self, self.title, start, self.files)
        if chosen:
            self.edit.setText(chosen)

    def value(self) -> str:
        return self.edit.text().strip()

    def set_value(self, value: object) -> None:
        self.edit.setText("" if value is None else str(value))
