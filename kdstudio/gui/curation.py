"""Automatic curation in the Outputs panel: the Curate menu (run a check, judge with a
teacher, best of n), each one's form (generated from its config, as the CLI's options are),
and the progress of the one running, with Stop.

The work is the core's `run_check` / `run_judge` / `best_of_n` in a Job (a QThread); its
decisions are committed as they are made, so the table is re-read while it runs and Stop
keeps every decision made so far (running the same curator again continues).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from kdstudio.collect import decisions
from kdstudio.collect import store as outputs
from kdstudio.curate.config import BY, BestConfig, CheckConfig, JudgeConfig
from kdstudio.errors import UserError
from kdstudio.gui import file_dialogs
from kdstudio.gui.config_form import SectionForm
from kdstudio.gui.widgets import PathPicker, fmt_count, hint
from kdstudio.gui.workers import Job

BUILTIN_CHECKS = ["exact", "numeric", "regex:^", "json-schema:"]
KINDS: dict[str, tuple[str, Any, str, str]] = {
    # kind: (menu text, config, verb, what it does)
    "check": (
        "Run a check…",
        CheckConfig,
        "Checking",
        "A program decides each answer: your function (prompt, answer, reference) -> bool "
        "or a 0..1 score, in separate processes with a timeout per answer, or a built-in "
        "check against the dataset's reference answer. An answer whose check raises, hangs "
        "or returns something else keeps that as its reason.",
    ),
    "judge": (
        "Judge with a teacher…",
        JudgeConfig,
        "Judging",
        "A teacher scores each answer from 0 to 10 with a rubric (kdstudio's, or your file "
        "with {prompt}, {answer} and {reference}), through the collection job: retries, "
        "cache, resume and the budget as when collecting. Its answers are kept as a "
        "collection of their own.",
    ),
    "best": (
        "Best of n…",
        BestConfig,
        "Choosing the best samples",
        "Of each prompt's samples, the one with the best score is accepted and the others "
        "rejected with the reason. Score the samples first with a check or a judge, or rank "
        "them by the teacher's confidence.",
    ),
}
PROGRESS_RELOAD_S = 1.0  # the table is re-read at most this often while decisions come in


def functions_in(path: str | Path) -> list[str]:
    """The top-level functions of a Python file that take three arguments (read, not run)."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and not node.name.startswith("_")
        and len(node.args.args) + len(node.args.posonlyargs) >= 3
    ]


class CheckPicker(QWidget):
    """The check to run: a built-in (listed), or FILE.py:FUNCTION from a chosen file."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.box = QComboBox()
        self.box.setEditable(True)
        self.box.addItems(BUILTIN_CHECKS)
        self.box.setCurrentText("")
        self.box.lineEdit().setPlaceholderText("checks.py:my_check, exact, regex:PATTERN …")
        browse = QPushButton("Python file…")
        browse.setToolTip("Choose a .py file: its functions of (prompt, answer, reference)")
        browse.clicked.connect(self.browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.box, 1)
        row.addWidget(browse)

    @Slot()
    def browse(self) -> None:
        path = file_dialogs.open_file(self, "A Python file with your check", "", "Python (*.py)")
        if path:
            self.use_file(path)

    def use_file(self, path: str) -> None:
        """Offer each check-like function of `path` (the first one chosen)."""
        names = functions_in(path) or ["check"]
        choices = [f"{path}:{n}" for n in names]
        self.box.clear()
        self.box.addItems([*choices, *BUILTIN_CHECKS])
        self.box.setCurrentText(choices[0])

    def value(self) -> str | None:
        return self.box.currentText().strip() or None

    def set_value(self, value: Any) -> None:
        self.box.setCurrentText("" if value is None else str(value))


class CurateDialog(QDialog):
    """The settings of one curator for one collection; `config()` once accepted."""

    def __init__(self, kind: str, ws: Any, collection: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        text, cls, _verb, about = KINDS[kind]
        self.kind, self.ws, self.collection, self.cls = kind, ws, collection, cls
        self.setWindowTitle(f"{text.rstrip('…')} — {collection}")
        self.form = SectionForm(cls, skip=("collection",))
        if kind == "check":
            self.form.replace_widget("check_spec", CheckPicker())
            self.form.layout_.labelForField(self.form.widgets["check_spec"]).setText("Check")
        elif kind == "judge":
            teachers = QComboBox()
            teachers.addItems(ws.teacher_names())
            self.form.replace_widget("teacher", teachers)
            self.form.replace_widget(
                "rubric",
                PathPicker(
                    "A rubric file",
                    files="Text (*.txt *.md);;All files (*)",
                    placeholder="kdstudio's rubric",
                ),
            )
        else:
            by = QComboBox()  # every kind, and each curator that scored this collection
            cid = outputs.collection_id(ws, collection)
            by.addItems([*BY, *decisions.deciders(ws.db, cid)])
            self.form.replace_widget("by", by)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #d23c3c")
        self.error.hide()
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Start")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(hint(about))
        layout.addWidget(self.form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        self.resize(620, self.sizeHint().height())

    def config(self) -> Any:
        """The config the form describes; UserError (a ConfigError) names a bad value."""
        values = {k: v for k, v in self.form.values().items() if v is not None}
        if not values.get("rubric"):  # an empty rubric field: kdstudio's rubric
            values.pop("rubric", None)
        return self.cls.from_dict({**values, "collection": self.collection})

    def accept(self) -> None:
        try:
            self.config()
        except UserError as exc:
            self.error.setText(str(exc))
            self.error.show()
            return
        super().accept()


class CurationBar(QWidget):
    """The Curate menu button, and the progress of the curator running (hidden when none).

    `decided` asks the panel to re-read its rows (while the curator runs, at most once a
    second, and when it ends); `ended(message, level)` says how it ended."""

    decided = Signal()
    ended = Signal(str, str)

    def __init__(self, panel: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.panel = panel
        self.job: Job | None = None
        self.verb = ""
        self.menu_button = QToolButton()
        self.menu_button.setText("Curate")
        self.menu_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.menu_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu_button.setToolTip("Decide answers automatically: a check, a judge, best of n")
        menu = QMenu(self.menu_button)
        self.actions_ = {}
        for kind, (text, *_rest) in KINDS.items():
            action = menu.addAction(text)
            action.setData(kind)
            self.actions_[kind] = action
        menu.triggered.connect(self.on_menu)
        self.menu_button.setMenu(menu)

        self.progress_row = QWidget()
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(260)
        self.bar.setFormat("%p%")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish the answers being decided, keep every decision")
        self.stop_button.clicked.connect(self.stop)
        row = QHBoxLayout(self.progress_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 1)
        row.addWidget(self.bar)
        row.addWidget(self.stop_button)
        self.progress_row.hide()
        self._reload = QTimer(self)
        self._reload.setSingleShot(True)
        self._reload.setInterval(int(PROGRESS_RELOAD_S * 1000))
        self._reload.timeout.connect(self.decided)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def set_enabled(self, on: bool) -> None:
        self.menu_button.setEnabled(on and not self.running)

    @Slot(object)
    def on_menu(self, action: Any) -> None:
        self.open(str(action.data()))

    def open(self, kind: str) -> None:
        """Ask for the settings, then start (the window's dialog; tests call `start`)."""
        collection = self.panel.collection
        if self.panel.ws is None or not collection or self.running:
            return
        dialog = CurateDialog(kind, self.panel.ws, collection, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.start(kind, dialog.config())

    def start(self, kind: str, config: Any) -> Job:
        from kdstudio.curate import best_of_n, run_check, run_judge

        fn = {"check": run_check, "judge": run_judge, "best": best_of_n}[kind]
        ws = self.panel.ws
        self.verb = KINDS[kind][2]

        def work(sink, cancel):
            return fn(config, ws, sink, cancel)

        job = self.panel.start_job(f"{self.verb.lower()} {config.collection}", work)
        job.sink.progressed.connect(self.on_progress)
        job.sink.logged.connect(self.on_log)
        job.succeeded.connect(self.on_succeeded)
        job.cancelled.connect(self.on_cancelled)
        job.ended.connect(self.on_ended)
        self.job = job
        self.label.setText(f"{self.verb} {config.collection}…")
        self.bar.setRange(0, 0)
        self.stop_button.setEnabled(True)
        self.progress_row.show()
        self.menu_button.setEnabled(False)
        job.start()
        return job

    @Slot()
    def stop(self) -> None:
        if self.running:
            self.job.stop("stopped by the user")
            self.stop_button.setEnabled(False)
            self.label.setText(f"{self.label.text()} — stopping: finishing the answers in hand")

    @Slot(object)
    def on_progress(self, event: Any) -> None:
        if event.total:
            self.bar.setRange(0, int(event.total))
            self.bar.setValue(int(event.done))
        if event.unit != "answer":  # the judge's requests (the collection job's progress)
            self.label.setText(
                f"{self.verb}: {fmt_count(event.done)} of {fmt_count(event.total)} "
                f"{event.unit}s"
                + (f" · {event.extra['failed']} failed" if event.extra.get("failed") else "")
            )
            return
        extra = event.extra or {}
        facts = [
            f"{fmt_count(extra[k])} {k}"
            for k in ("accepted", "rejected", "pending", "errors", "skipped")
            if extra.get(k)
        ]
        self.label.setText(
            f"{self.verb}: {fmt_count(event.done)} of {fmt_count(event.total)} answers"
            + (f" · {' · '.join(facts)}" if facts else "")
        )
        if not self._reload.isActive():
            self._reload.start()

    @Slot(object)
    def on_log(self, event: Any) -> None:
        if event.level in ("warning", "error"):
            self.ended.emit(event.message, "warning")

    @Slot(object)
    def on_succeeded(self, summary: Any) -> None:
        level = "warning" if summary.status != "done" else "success"
        self.ended.emit(f"Collection {summary.message}", level)

    @Slot(str)
    def on_cancelled(self, reason: str) -> None:
        reason = reason[:1].upper() + reason[1:]
        self.ended.emit(f"Stopped: {reason}. Every decision made so far is kept.", "warning")

    @Slot()
    def on_ended(self) -> None:
        self._reload.stop()
        self.progress_row.hide()
        self.menu_button.setEnabled(self.panel.collection is not None)
        self.decided.emit()
