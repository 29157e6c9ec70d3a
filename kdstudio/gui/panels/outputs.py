"""Outputs: browse collected teacher outputs, search and filter, review, edit, export, and
curate automatically (a check, a judge, best of n: `kdstudio.gui.curation`). Each answer
shows its review with the score, reason and decider of the decision in force, and the
detail pane lists every earlier decision."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from kdstudio.collect import decisions
from kdstudio.collect import store as outputs
from kdstudio.data.importer import plural
from kdstudio.formatting import usd
from kdstudio.gui import file_dialogs
from kdstudio.gui.curation import CurationBar
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.table_models import Column, LazyTableModel
from kdstudio.gui.tokenview import TokenView
from kdstudio.gui.widgets import (
    Selection,
    escape,
    fmt_count,
    fmt_time,
    heading,
    hint,
    row_table,
)

STATE_COLOURS = {
    "failed": "#d23c3c",
    "queued": "#888888",
    "in_flight": "#2f6fdb",
    "retrying": "#c98a06",
}
REVIEW_COLOURS = {"accepted": "#2e9b4f", "rejected": "#d23c3c"}


def _conf(item: outputs.Item) -> str:
    return f"{item.confidence:.2f}" if item.confidence is not None else ""


def _score(item: outputs.Item) -> str:
    return f"{item.score:.2f}" if item.score is not None else ""


def _response(item: outputs.Item) -> str:
    """The answer, or for a failed request what went wrong (never as if it were one)."""
    if item.status == "done":
        return item.response or ""
    if item.status == "failed":
        return f"error: {item.error or 'unknown'}"
    return ""


COLUMNS = [
    Column("#", lambda i: i.idx, align_right=True),
    Column("Sample", lambda i: i.sample, align_right=True),  # shown when there are several
    Column("State", lambda i: i.status, colour=lambda i: STATE_COLOURS.get(i.status)),
    Column(
        "Review",
        lambda i: i.review + (" (edited)" if i.edited else ""),
        colour=lambda i: REVIEW_COLOURS.get(i.review),
    ),
    Column("Score", _score, align_right=True),
    Column("Decider", lambda i: i.decider or "", tooltip=True),
    Column("Reason", lambda i: i.reason or "", tooltip=True, max_chars=120),
    Column("Prompt", lambda i: i.prompt, tooltip=True, max_chars=120),
    Column(
        "Response",
        _response,
        tooltip=True,
        max_chars=160,
        colour=lambda i: STATE_COLOURS["failed"] if i.status == "failed" else None,
    ),
    Column("Out tokens", lambda i: i.completion_tokens or None, align_right=True),
    Column("Confidence", _conf, align_right=True),
    Column("Cost", lambda i: usd(i.cost) if i.cost else "", align_right=True),
]
ANY = "any"
SAMPLE_COLUMN = 1
SCORE_COLUMN = 4
DECIDER_COLUMN = 5
REASON_COLUMN = 6
RESPONSE_COLUMN = 8
CURATION_COLUMNS = (SCORE_COLUMN, DECIDER_COLUMN, REASON_COLUMN)  # shown once one decided
DECIDER_KINDS = [ANY, "person", "check", "judge", "best"]


class OutputsPanel(Panel):
    title = "Outputs"
    key = "outputs"
    selection_exported = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.collection: str | None = None
        self.detail: outputs.ItemDetail | None = None
        self._counts: tuple[dict[str, int], int] | None = None  # (reviews, items) shown
        self._filters: dict[str, dict[str, object]] = {}  # each collection's search, filters
        self._reselecting = False

        self.collection_box = QComboBox()
        self.collection_box.setMinimumWidth(180)
        self.collection_box.currentTextChanged.connect(self.on_collection_chosen)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search prompts and responses (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.state = self._combo([ANY, *outputs.STATES])
        self.review = self._combo([ANY, *outputs.REVIEWS])
        self.logprobs = self._combo([ANY, "with logprobs", "without"])
        self.min_chars = self._spin("min chars")
        self.max_chars = self._spin("max chars")
        self.min_conf = QDoubleSpinBox()
        self.min_conf.setRange(0, 1)
        self.min_conf.setSingleStep(0.05)
        self.min_conf.setDecimals(2)
        self.min_conf.setPrefix("conf ≥ ")
        self.max_conf = QDoubleSpinBox()
        self.max_conf.setRange(0, 1)
        self.max_conf.setValue(1)
        self.max_conf.setSingleStep(0.05)
        self.max_conf.setDecimals(2)
        self.max_conf.setPrefix("conf ≤ ")
        self.decider = self._combo(DECIDER_KINDS)
        self.decider.setToolTip("Who decided the review: a person, a check, a judge, best of n")
        self.min_score = self._score_spin("score ≥ ", 0.0)
        self.max_score = self._score_spin("score ≤ ", 1.0)
        self.order = self._combo(["idx", "confidence", "length", "cost", "score"])
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.apply_filter)
        self.search.textChanged.connect(self._debounce.start)
        for w in (self.min_chars, self.max_chars):
            w.valueChanged.connect(self._debounce.start)
        for w in (self.min_conf, self.max_conf, self.min_score, self.max_score):
            w.valueChanged.connect(self._debounce.start)
        for w in (self.state, self.review, self.logprobs, self.decider, self.order):
            w.currentIndexChanged.connect(self.apply_filter)
        self.curation = CurationBar(self)
        self.curation.decided.connect(self.on_curation_decided)
        self.curation.ended.connect(self.on_curation_ended)

        top = QHBoxLayout()
        top.addWidget(QLabel("Collection"))
        top.addWidget(self.collection_box)
        top.addWidget(self.search, 1)
        top.addWidget(self.curation.menu_button)
        filters = QHBoxLayout()
        for label, w in (
            ("State", self.state),
            ("Review", self.review),
            ("Decider", self.decider),
            ("Logprobs", self.logprobs),
        ):
            filters.addWidget(QLabel(label))
            filters.addWidget(w)
        filters.addWidget(self.min_chars)
        filters.addWidget(self.max_chars)
        filters.addWidget(self.min_conf)
        filters.addWidget(self.max_conf)
        filters.addWidget(self.min_score)
        filters.addWidget(self.max_score)
        filters.addWidget(QLabel("Sort"))
        filters.addWidget(self.order)
        filters.addStretch(1)

        self.model = LazyTableModel(COLUMNS, page_size=200)
        self.table = row_table(self.model, Selection.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for i, w in enumerate((44, 56, 60, 80, 44, 120, 170, 200, 300, 76, 76, 84)):  # "$0.000012"
            self.table.setColumnWidth(i, w)
        header.setStretchLastSection(False)
        header.setSectionResizeMode(RESPONSE_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(self.on_selection_changed)
        self.count_label = QLabel()

        # detail pane
        self.prompt_view = QTextBrowser()
        self.prompt_view.setMaximumHeight(170)
        self.response_view = TokenView()
        self.editor = QPlainTextEdit()
        self.response_stack = QStackedWidget()
        self.response_stack.addWidget(self.response_view)
        self.response_stack.addWidget(self.editor)
        self.detail_info = QLabel()
        self.detail_info.setWordWrap(True)
        self.decision_info = QLabel()
        self.decision_info.setWordWrap(True)
        self.decision_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.legend = hint(
            "Shaded tokens: the teacher was unsure (orange < 90 %, red < 50 %); ∎ marks a special "
            "token such as the end of the turn. Hover a token for its alternatives."
        )
        self.accept_button = QPushButton("Accept (A)")
        self.reject_button = QPushButton("Reject (R)")
        self.edit_button = QPushButton("Edit (E)")
        self.save_edit_button = QPushButton("Save edit")
        self.cancel_edit_button = QPushButton("Cancel")
        self.revert_button = QPushButton("Revert to original")
        self.export_button = QPushButton("Export selection…")
        self.accept_button.clicked.connect(self.accept_selected)
        self.reject_button.clicked.connect(self.reject_selected)
        self.edit_button.clicked.connect(self.start_edit)
        self.save_edit_button.clicked.connect(self.save_edit)
        self.cancel_edit_button.clicked.connect(self.cancel_edit)
        self.revert_button.clicked.connect(self.revert_edit)
        self.export_button.clicked.connect(self.export_selection_dialog)
        actions = QHBoxLayout()
        for b in (
            self.accept_button,
            self.reject_button,
            self.edit_button,
            self.save_edit_button,
            self.cancel_edit_button,
            self.revert_button,
        ):
            actions.addWidget(b)
        actions.addStretch(1)
        self.save_edit_button.hide()
        self.cancel_edit_button.hide()
        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addWidget(heading("Prompt"))
        dl.addWidget(self.prompt_view)
        dl.addWidget(heading("Response"))
        dl.addWidget(self.detail_info)
        dl.addWidget(self.response_stack, 1)
        dl.addWidget(self.legend)
        dl.addWidget(self.decision_info)
        dl.addLayout(actions)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.table, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.count_label, 1)
        bottom.addWidget(self.export_button)
        ll.addLayout(bottom)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([850, 550])
        self.body.addLayout(top)
        self.body.addLayout(filters)
        self.body.addWidget(self.curation.progress_row)
        self.body.addWidget(split, 1)

        for key, slot in (
            ("A", self.accept_selected),
            ("R", self.reject_selected),
            ("E", self.start_edit),
        ):
            sc = QShortcut(QKeySequence(key), self.table)
            sc.setContext(Qt.ShortcutContext.WidgetShortcut)
            sc.activated.connect(slot)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):  # the editor's own: save the edit
            save = QShortcut(QKeySequence(keys), self.editor)
            save.setContext(Qt.ShortcutContext.WidgetShortcut)
            save.activated.connect(self.save_edit)
        self.save_edit_button.setToolTip("Save the edited answer (Ctrl+Enter)")
        find = QShortcut(QKeySequence.StandardKey.Find, self)
        find.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.activated.connect(self.search.setFocus)
        self._default_filter = self.filter_state()
        self.show_item(None)

    @staticmethod
    def _combo(items: list[str]) -> QComboBox:
        box = QComboBox()
        box.addItems(items)
        return box

    @staticmethod
    def _score_spin(prefix: str, value: float) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(0, 1)
        box.setValue(value)
        box.setSingleStep(0.1)
        box.setDecimals(2)
        box.setPrefix(prefix)
        box.setToolTip("The curation score (a check's, a judge's, best of n's), 0 to 1")
        return box

    @staticmethod
    def _spin(label: str) -> QSpinBox:
        box = QSpinBox()
        box.setRange(0, 10_000_000)
        box.setSpecialValueText(label)
        box.setSingleStep(100)
        return box

    # -- collections and the query -------------------------------------------------------
    def refresh(self) -> None:
        if self.ws is None:
            return
        names = outputs.collection_names(self.ws)
        current = self.collection if self.collection in names else (names[0] if names else None)
        self.collection_box.blockSignals(True)
        self.collection_box.clear()
        self.collection_box.addItems(names)
        if current:
            self.collection_box.setCurrentText(current)
        self.collection_box.blockSignals(False)
        self.curation.set_enabled(bool(names))
        if not names:
            self.leave_edit(can_stay=False)
            self.collection = None
            self.model.clear()
            self.count_label.setText("")
            self.message.show_message(
                "No collections yet: collect teacher outputs in the Collect panel.", "info"
            )
            return
        if self.message.text.startswith("No collections"):
            self.message.clear()
        if current != self.collection:
            self.switch_collection(current)
        else:
            self.apply_filter()

    def workspace_updated(self) -> None:
        """Rows another process stored show up; the selection, the scroll position and an
        edit in progress stay (the window calls this at most as often as it is cheap)."""
        if self.ws is None:
            return
        names = outputs.collection_names(self.ws)
        shown = [self.collection_box.itemText(i) for i in range(self.collection_box.count())]
        if shown != names or not self.collection:
            self.refresh()
            return
        if self.response_stack.currentWidget() is self.editor:
            return  # never pull rows from under an edit
        keys = {(it.row_id, it.sample) for it in self.selected_items()}
        scroll = self.table.verticalScrollBar().value()
        selection = self.table.selectionModel()
        selection.blockSignals(True)
        self.model.reload()
        for i, it in enumerate(self.model.rows):
            if (it.row_id, it.sample) in keys:
                selection.select(
                    self.model.index(i, 0),
                    selection.SelectionFlag.Select | selection.SelectionFlag.Rows,
                )
        selection.blockSignals(False)
        self.table.verticalScrollBar().setValue(scroll)
        self.table.viewport().update()
        self.update_counts(live=True)
        if keys:
            self.on_selection_changed()

    def show_collection(self, name: str) -> None:
        self.collection_box.setCurrentText(name)
        self.refresh()
        if name != self.collection:
            self.switch_collection(name)

    @Slot(str)
    def on_collection_chosen(self, name: str) -> None:
        if name and name != self.collection:
            self.switch_collection(name)

    def switch_collection(self, name: str) -> None:
        """Show another collection with its own search and filters (as it left them)."""
        if not self.leave_edit(can_stay=False):
            return
        if self.collection:
            self._filters[self.collection] = self.filter_state()
        self.collection = name
        self.set_filter_state(self._filters.get(name, self._default_filter))
        if self.collection_box.currentText() != name:
            self.collection_box.blockSignals(True)
            self.collection_box.setCurrentText(name)
            self.collection_box.blockSignals(False)
        samples = outputs.get_collection(self.ws, name).params.get("samples", 1)
        self.table.setColumnHidden(SAMPLE_COLUMN, samples <= 1)
        self.update_deciders()
        self.apply_filter()

    def update_deciders(self) -> None:
        """The decider filter offers each kind and every curator that decided here."""
        if self.ws is None or not self.collection:
            return
        cid = outputs.collection_id(self.ws, self.collection)
        found = decisions.deciders(self.ws.db, cid)
        for column in CURATION_COLUMNS:  # a collection nobody has curated: no empty columns
            self.table.setColumnHidden(column, not found)
        items = [*DECIDER_KINDS, *(d for d in found if ":" in d)]
        if [self.decider.itemText(i) for i in range(self.decider.count())] != items:
            current = self.decider.currentText()
            self.decider.blockSignals(True)
            self.decider.clear()
            self.decider.addItems(items)
            self.decider.setCurrentText(current if current in items else ANY)
            self.decider.blockSignals(False)

    def _filter_widgets(self) -> dict[str, QWidget]:
        return {
            "search": self.search,
            "state": self.state,
            "review": self.review,
            "logprobs": self.logprobs,
            "min_chars": self.min_chars,
            "max_chars": self.max_chars,
            "min_conf": self.min_conf,
            "max_conf": self.max_conf,
            "decider": self.decider,
            "min_score": self.min_score,
            "max_score": self.max_score,
            "order": self.order,
        }

    def filter_state(self) -> dict[str, object]:
        """The search text and every filter, as the widgets show them."""
        state: dict[str, object] = {}
        for key, w in self._filter_widgets().items():
            if isinstance(w, QLineEdit):
                state[key] = w.text()
            elif w is self.decider:  # its items differ from one collection to the next
                state[key] = w.currentText()
            elif isinstance(w, QComboBox):
                state[key] = w.currentIndex()
            else:
                state[key] = w.value()
        return state

    def set_filter_state(self, state: dict[str, object]) -> None:
        """Put a collection's search and filters back, without a query per widget."""
        for key, w in self._filter_widgets().items():
            if isinstance(w, QLineEdit):  # its own signals too (the clear button follows)
                w.setText(str(state[key]))
                continue
            w.blockSignals(True)
            if w is self.decider:
                w.setCurrentText(str(state[key]) if w.findText(str(state[key])) >= 0 else ANY)
            elif isinstance(w, QComboBox):
                w.setCurrentIndex(int(state[key]))
            else:
                w.setValue(state[key])
            w.blockSignals(False)
        self._debounce.stop()  # the search text's change: one query, by the caller

    def current_filter(self) -> outputs.ItemFilter:
        lp = self.logprobs.currentIndex()
        return outputs.ItemFilter(
            status=None if self.state.currentText() == ANY else self.state.currentText(),
            review=None if self.review.currentText() == ANY else self.review.currentText(),
            search=self.search.text().strip() or None,
            min_chars=self.min_chars.value() or None,
            max_chars=self.max_chars.value() or None,
            has_logprobs=None if lp == 0 else lp == 1,
            min_confidence=self.min_conf.value() or None,
            max_confidence=self.max_conf.value() if self.max_conf.value() < 1 else None,
            min_score=self.min_score.value() or None,
            max_score=self.max_score.value() if self.max_score.value() < 1 else None,
            decider=None if self.decider.currentText() == ANY else self.decider.currentText(),
            order=self.order.currentText(),
        )

    @Slot()
    def apply_filter(self) -> None:
        if self.ws is None or not self.collection:
            return
        self.leave_edit(can_stay=False)  # the rows are about to change under it
        ws, name, filt = self.ws, self.collection, self.current_filter()

        def fetch(offset: int, limit: int):
            return outputs.list_items(ws, name, filt, offset=offset, limit=limit)

        def count() -> int:
            return outputs.count_items(ws, name, filt)

        self.model.set_query(fetch, count)
        self.update_counts()
        self.show_item(None)

    def update_counts(self, *, live: bool = False) -> None:
        if self.ws is None or not self.collection:
            return
        if not live or self._counts is None:
            # Reviews are made here and a collection's items all exist from its start, so
            # a live re-read (another process storing answers) keeps these: counting the
            # reviews of a million items takes half a second.
            self._counts = (
                outputs.review_counts(self.ws, self.collection),
                outputs.count_items(self.ws, self.collection),
            )
        reviews, total = self._counts
        self.count_label.setText(
            f"{fmt_count(self.model.total)} matching of {fmt_count(total)} · "
            f"accepted {fmt_count(reviews['accepted'])} · rejected {fmt_count(reviews['rejected'])}"
        )

    # -- selection and detail ------------------------------------------------------------
    def selected_rows(self) -> list[int]:
        return sorted(i.row() for i in self.table.selectionModel().selectedRows())

    def selected_items(self) -> list[outputs.Item]:
        return [self.model.row(i) for i in self.selected_rows()]

    @Slot()
    def on_selection_changed(self) -> None:
        if self._reselecting:
            return
        rows = self.selected_rows()
        chosen = self.model.row(rows[0]) if len(rows) == 1 else None
        editing = self.detail.item if self.detail is not None else None
        leaving = editing is not None and (
            chosen is None or (chosen.row_id, chosen.sample) != (editing.row_id, editing.sample)
        )
        if leaving and not self.leave_edit(can_stay=True):
            self.reselect(editing)  # "Cancel": back to the answer being edited
            return
        self.show_item(chosen, many=len(rows))

    def reselect(self, item: outputs.Item) -> None:
        """Select `item`'s row again without treating it as a new choice."""
        self._reselecting = True
        try:
            for i, row in enumerate(self.model.rows):
                if (row.row_id, row.sample) == (item.row_id, item.sample):
                    self.table.selectRow(i)
                    break
        finally:
            self._reselecting = False

    def edit_pending(self) -> bool:
        """Whether the editor holds a change not saved yet."""
        return (
            self.response_stack.currentWidget() is self.editor
            and self.detail is not None
            and self.editor.toPlainText() != (self.detail.item.response or "")
        )

    def leave_edit(self, *, can_stay: bool) -> bool:
        """Before an edited answer goes out of view: ask to save or discard it (or, when
        `can_stay`, to stay on it). True when the caller may go on."""
        if not self.edit_pending():
            self.cancel_edit()
            return True
        it = self.detail.item
        buttons = QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
        if can_stay:
            buttons |= QMessageBox.StandardButton.Cancel
        answer = QMessageBox.question(
            self,
            "Unsaved edit",
            f"You edited the answer of row {it.idx} (sample {it.sample}). Save the edit?",
            buttons,
            QMessageBox.StandardButton.Save,
        )
        if answer == QMessageBox.StandardButton.Save:
            self.store_edit(it, self.editor.toPlainText())
        elif answer != QMessageBox.StandardButton.Discard:
            return False
        self.cancel_edit()
        return True

    def show_item(self, item: outputs.Item | None, many: int = 0) -> None:
        for b in (self.accept_button, self.reject_button):
            b.setEnabled(item is not None and item.status == "done" or many > 1)
        self.edit_button.setEnabled(item is not None and item.status == "done")
        self.export_button.setEnabled(many > 0 or item is not None)
        self.revert_button.setVisible(bool(item and item.edited))
        self.legend.hide()
        self.decision_info.hide()
        if item is None:
            self.detail = None
            self.prompt_view.setPlainText("")
            self.response_view.show_text("")
            self.detail_info.setText(
                f"{many} items selected: accept, reject or export them together."
                if many > 1
                else "Select an output to see it here."
            )
            return
        self.detail = d = outputs.get_item(self.ws, self.collection, item.row_id, item.sample)
        self.prompt_view.setHtml(
            "".join(
                f"<p><b>{escape(m.get('role', ''))}</b><br>{escape(str(m.get('content', ''))).replace(chr(10), '<br>')}</p>"
                for m in d.messages
            )
        )
        it = d.item
        facts = [f"row {it.idx}", f"sample {it.sample}", it.status, f"review: {it.review}"]
        if it.status == "done":
            if it.prompt_tokens or it.completion_tokens:
                facts.append(f"{it.prompt_tokens} → {it.completion_tokens} tokens")
            if it.finish_reason:
                facts.append(f"finish: {it.finish_reason}")
            if it.confidence is not None:
                facts.append(f"confidence {it.confidence:.2f}")
            if it.cost:
                facts.append(usd(it.cost))
            if it.cached:
                facts.append("from cache")
            if d.latency:
                facts.append(f"{d.latency:.2f} s")
        if it.edited:
            facts.append(
                "<b>edited</b> (the teacher's original is kept: “Revert to original” restores it)"
            )
        if it.status == "failed":
            facts.append(
                f"<span style='color:{STATE_COLOURS['failed']}'>failed after "
                f"{plural(it.attempts, 'attempt')}</span>"
            )
        self.detail_info.setText(" · ".join(facts))
        self.show_decisions(d)
        if it.status == "failed":
            self.response_view.show_error(f"No answer: the request failed. {it.error or ''}")
        elif it.status != "done":
            self.response_view.show_text("")
        elif d.logprobs is not None and not it.edited and len(d.logprobs):
            self.response_view.show_tokens(d.logprobs, it.response or "")
            self.legend.show()
        else:
            self.response_view.show_text(it.response or "")

    def show_decisions(self, d: outputs.ItemDetail) -> None:
        """The decision in force (who, score, why) and every earlier one, newest first."""
        if not d.history:
            return
        it = d.item
        lines = []
        if it.decider:
            score = f", score {it.score:.2f}" if it.score is not None else ""
            reason = f": {escape(it.reason)}" if it.reason else ""
            lines.append(f"<b>{it.review}</b> by {escape(it.decider)}{score}{reason}")
        earlier = list(reversed(d.history))[1 if it.decider else 0 :]
        for past in earlier[:8]:
            score = f" {past.score:.2f}" if past.score is not None else ""
            note = "" if past.applied else " <i>(recorded; a person's decision stood)</i>"
            reason = f" — {escape(past.reason)}" if past.reason else ""
            lines.append(
                f"<span style='color:gray'>{fmt_time(past.t)}</span> {escape(past.decider)}: "
                f"{past.review}{score}{reason}{note}"
            )
        if len(earlier) > 8:
            lines.append(f"… and {len(earlier) - 8} earlier (`kdstudio outputs history`)")
        self.decision_info.setText("<br>".join(lines))
        self.decision_info.show()

    # -- automatic curation --------------------------------------------------------------
    @Slot()
    def on_curation_decided(self) -> None:
        """A curator stored decisions: show them (the selection and scroll stay)."""
        self._counts = None
        self.update_deciders()
        self.workspace_updated()

    @Slot(str, str)
    def on_curation_ended(self, message: str, level: str) -> None:
        self.message.show_message(message, level)

    # -- review --------------------------------------------------------------------------
    @Slot()
    def accept_selected(self) -> None:
        self.review_selected("accepted")

    @Slot()
    def reject_selected(self) -> None:
        self.review_selected("rejected")

    def review_selected(self, review: str) -> None:
        rows = [i for i in self.selected_rows() if self.model.row(i).status == "done"]
        if not rows or self.ws is None:
            return
        with self.ws.tx():
            for i in rows:
                it = self.model.row(i)
                outputs.set_review(self.ws, self.collection, it.row_id, it.sample, review)
        self.reload_rows(rows)
        self.update_counts()
        self.update_deciders()
        self.workspace_changed.emit()
        if len(rows) == 1 and rows[0] + 1 < self.model.rowCount():
            self.table.selectRow(rows[0] + 1)  # review the next one
        elif len(rows) == 1:
            self.show_item(self.model.row(rows[0]))

    def reload_rows(self, rows: list[int]) -> None:
        for i in rows:
            it = self.model.row(i)
            self.model.replace_row(
                i, outputs.get_item(self.ws, self.collection, it.row_id, it.sample).item
            )

    @Slot()
    def start_edit(self) -> None:
        if self.detail is None or self.detail.item.status != "done":
            return
        self.editor.setPlainText(self.detail.item.response or "")
        self.response_stack.setCurrentWidget(self.editor)
        self.save_edit_button.show()
        self.cancel_edit_button.show()
        self.edit_button.hide()
        self.editor.setFocus()

    @Slot()
    def save_edit(self) -> None:
        if self.detail is None or self.response_stack.currentWidget() is not self.editor:
            return
        item = self.detail.item
        self.store_edit(item, self.editor.toPlainText())
        self.cancel_edit()
        row = self.row_of(item)
        if row is not None:
            self.show_item(self.model.row(row))

    def store_edit(self, item: outputs.Item, text: str) -> None:
        """Save an edited answer of `item` (accepted unless already reviewed); the row
        shows it whether or not it is still selected."""
        review = item.review if item.review != "pending" else "accepted"
        outputs.set_review(self.ws, self.collection, item.row_id, item.sample, review, text)
        row = self.row_of(item)
        if row is not None:
            self.reload_rows([row])
        self.update_counts()
        self.workspace_changed.emit()

    def row_of(self, item: outputs.Item) -> int | None:
        return next(
            (
                i
                for i, row in enumerate(self.model.rows)
                if (row.row_id, row.sample) == (item.row_id, item.sample)
            ),
            None,
        )

    @Slot()
    def cancel_edit(self) -> None:
        self.response_stack.setCurrentWidget(self.response_view)
        self.save_edit_button.hide()
        self.cancel_edit_button.hide()
        self.edit_button.show()

    @Slot()
    def revert_edit(self) -> None:
        rows = self.selected_rows()
        if self.detail is None or len(rows) != 1:
            return
        it = self.detail.item
        outputs.clear_edit(self.ws, self.collection, it.row_id, it.sample)
        self.reload_rows(rows)
        self.show_item(self.model.row(rows[0]))

    # -- export --------------------------------------------------------------------------
    @Slot()
    def export_selection_dialog(self) -> None:
        if not self.selected_rows():
            return
        path = file_dialogs.save_file(
            self,
            "Export selected outputs",
            str(Path.home() / f"{self.collection}.jsonl"),
            "JSON Lines (*.jsonl)",
        )
        if path:
            self.export_selection(path)

    def export_selection(self, path: str | Path) -> int:
        """Write the selected finished outputs as chat JSONL (prompt turns + the answer)."""
        keys = [(it.row_id, it.sample) for it in self.selected_items() if it.status == "done"]
        n = outputs.export_items(self.ws, self.collection, path, keys=keys)
        self.message.show_message(f"Exported {plural(n, 'output')} to {path}.", "success")
        self.selection_exported.emit(str(path))
        return n
