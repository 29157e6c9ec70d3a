"""Collect: ask a teacher for answers to a dataset's prompts, with cost, progress and resume.

The job is the core's `collect(config, ws, sink, cancel)` in a QThread. Pause and Stop
both cancel it the core's way (stop launching, let in-flight requests finish and store
them); a paused collection resumes with the same settings, and re-running never pays twice.
Every unfinished collection is listed by name (interrupted ones, and failed ones with why);
Resume fills the form from the settings it ran with (kdstudio.resume), and a form that
would not continue the collection of its name says so before Start.

Money is said in two labelled figures that are never mixed: what the whole collection has
cost so far (every run of it, the job's `spent_usd`), and the estimate for what is left
(the job's `estimate_usd` was for the requests queued when it started; the part for the
requests still left is in proportion). The progress card describes one collection, named
in its title: the one running, or, when idle, the one the form names, so no spend,
estimate or ETA of another job or teacher stays on screen. A local teacher costs nothing
and shows no money at all.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from kdstudio.collect import CollectConfig, collect, estimate_cost
from kdstudio.collect import store as outputs
from kdstudio.collect.cost import CostEstimate
from kdstudio.data import store
from kdstudio.errors import UserError
from kdstudio.events import Finished, Log, Progress, RowDone
from kdstudio.events import Warning as WarningEvent
from kdstudio.formatting import duration, usd
from kdstudio.gui.config_form import SectionForm
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.problems import window_words
from kdstudio.gui.table_models import Column, ListTableModel
from kdstudio.gui.widgets import Card, Selection, hint, row_table
from kdstudio.gui.workers import ErrorInfo, Job
from kdstudio.resume import collect_conflict, collect_settings, unfinished_collections

MAIN_FIELDS = (
    "teacher",
    "dataset",
    "name",
    "samples",
    "max_tokens",
    "temperature",
    "top_logprobs",
    "concurrency",
    "budget",
    "batch_api",
    "limit",
)
STATE_LABELS = (
    ("queued", "queued"),
    ("in_flight", "in flight"),
    ("retrying", "retrying"),
    ("done", "done"),
    ("failed", "failed"),
)
FAILURE_COLUMNS = [
    Column("Row", lambda e: e.row, align_right=True),
    Column("Reason", lambda e: e.detail, tooltip=True, max_chars=300),
]
MAX_FAILURES_SHOWN = 2000
NO_ESTIMATE = "Estimate the cost of what is left to collect before starting."


class CollectPanel(Panel):
    title = "Collect"
    key = "collect"
    collection_finished = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job: Job | None = None
        self.config: CollectConfig | None = None
        self.estimate: CostEstimate | None = None
        self.estimate_for: dict | None = None
        self._start_after_estimate = False
        self._rate_t0 = 0.0
        self._rate_done0 = 0
        self._confirm_pending = False  # the message bar's button starts the estimated run
        self.conflict: str | None = None  # why the form cannot continue its collection
        self.unfinished: dict[str, Any] = {}  # name -> kdstudio.resume.Unfinished
        self.shown: str | None = None  # the collection the progress card describes

        self.main_form = SectionForm(CollectConfig, only=MAIN_FIELDS)
        self.advanced_form = SectionForm(CollectConfig, skip=MAIN_FIELDS)
        self.teacher_box = QComboBox()
        self.dataset_box = QComboBox()
        self.main_form.replace_widget("teacher", self.teacher_box)
        self.main_form.replace_widget("dataset", self.dataset_box)
        self.teacher_box.currentTextChanged.connect(self.on_form_changed)
        self.dataset_box.currentTextChanged.connect(self.on_form_changed)
        self.main_form.changed.connect(self.on_form_changed)
        self.advanced_form.changed.connect(self.on_form_changed)
        self.main_form.widgets["name"].setPlaceholderText("default: DATASET.TEACHER")
        self.main_form.widgets["top_logprobs"].setPlaceholderText(
            "empty: text only; 1-20: logprobs"
        )
        self.main_form.widgets["budget"].setPlaceholderText("USD; empty: no limit")
        self.main_form.widgets["limit"].setPlaceholderText("empty: every prompt")
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced settings")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.toggled.connect(self.toggle_advanced)
        self.advanced_form.hide()
        self.teacher_note = hint("")

        form_card = Card("What to collect")
        form_card.body.addWidget(self.main_form)
        form_card.body.addWidget(self.teacher_note)
        form_card.body.addWidget(self.advanced_toggle)
        form_card.body.addWidget(self.advanced_form)
        form_card.body.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(form_card)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(380)

        # -- estimate and controls ---------------------------------------------------------
        self.estimate_label = QLabel(NO_ESTIMATE)
        self.estimate_label.setWordWrap(True)
        self.estimate_button = QPushButton("Estimate cost")
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Estimate, then start collecting (Ctrl+Enter)")
        self.add_shortcut("Ctrl+Return", self.start)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip(
            "Stop launching requests; in-flight answers are kept. Resume any time."
        )
        self.stop_button = QPushButton("Stop")
        self.estimate_button.clicked.connect(self.request_estimate)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.pause)
        self.stop_button.clicked.connect(self.stop)
        controls = QHBoxLayout()
        for b in (self.estimate_button, self.start_button, self.pause_button, self.stop_button):
            controls.addWidget(b)
        controls.addStretch(1)
        est_card = Card("Cost before starting")
        est_card.body.addWidget(self.estimate_label)
        est_card.body.addLayout(controls)

        # -- unfinished collections, each by name ----------------------------------------
        self.unfinished_box = QComboBox()
        self.unfinished_box.setMinimumWidth(220)
        self.unfinished_box.currentIndexChanged.connect(self.show_unfinished)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Put this collection's settings in the form; Start then asks only for the "
            "missing answers (nothing is paid twice)"
        )
        self.resume_button.clicked.connect(self.resume_selected)
        self.unfinished_label = hint("")
        row = QHBoxLayout()
        row.addWidget(self.unfinished_box, 1)
        row.addWidget(self.resume_button)
        self.unfinished_card = Card("Unfinished collections")
        self.unfinished_card.body.addLayout(row)
        self.unfinished_card.body.addWidget(self.unfinished_label)
        self.unfinished_card.hide()
        self.conflict_timer = QTimer(self)  # the conflict check reads the workspace: debounced
        self.conflict_timer.setSingleShot(True)
        self.conflict_timer.setInterval(150)
        self.conflict_timer.timeout.connect(self.check_conflict)

        self.progress_title = QLabel("")
        self.progress_title.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m requests (%p%)")
        self.rate_label = QLabel("")
        self.rate_label.setWordWrap(True)
        self.spend_label = QLabel("")
        self.spend_bar = QProgressBar()
        self.spend_bar.setFormat("spend vs budget %p%")
        self.spend_bar.setMaximumHeight(14)
        self.spend_bar.setTextVisible(False)
        self.spend_bar.hide()
        self.state_labels: dict[str, QLabel] = {}
        states = QHBoxLayout()
        for key, label in STATE_LABELS:
            lab = QLabel(f"{label}: 0")
            if key == "failed":
                lab.setStyleSheet("color: #d23c3c")
            elif key == "done":
                lab.setStyleSheet("color: #2e9b4f")
            self.state_labels[key] = lab
            states.addWidget(lab)
        states.addStretch(1)
        prog_card = Card("Progress")
        prog_card.body.addWidget(self.progress_title)
        prog_card.body.addWidget(self.progress)
        prog_card.body.addWidget(self.rate_label)
        prog_card.body.addWidget(self.spend_label)
        prog_card.body.addWidget(self.spend_bar)
        prog_card.body.addLayout(states)

        self.failures = ListTableModel(FAILURE_COLUMNS)
        self.failure_table = row_table(self.failures, Selection.ExtendedSelection)
        self.failure_table.horizontalHeader().setStretchLastSection(True)
        self.failure_table.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.ResizeToContents
        )
        self.failure_label = QLabel("Failures: none")
        self.open_outputs_button = QPushButton("Browse outputs")
        fail_card = Card("")
        row = QHBoxLayout()
        row.addWidget(self.failure_label, 1)
        row.addWidget(self.open_outputs_button)
        fail_card.body.addLayout(row)
        fail_card.body.addWidget(self.failure_table, 1)
        self.open_outputs_button.clicked.connect(self.browse_outputs)

        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(6, 0, 0, 0)
        rl.addWidget(self.unfinished_card)
        rl.addWidget(est_card)
        rl.addWidget(prog_card)
        rl.addWidget(fail_card, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(right)
        split.setSizes([420, 900])
        self.body.addWidget(split, 1)

        self.counts_timer = QTimer(self)
        self.counts_timer.setInterval(1000)
        self.counts_timer.timeout.connect(self.update_counts)
        self._failed_rows: list[RowDone] = []
        self.update_buttons()

    # -- workspace -----------------------------------------------------------------------
    def refresh(self) -> None:
        if self.ws is None:
            return
        self._fill(self.teacher_box, self.ws.teacher_names())
        self._fill(self.dataset_box, store.dataset_names(self.ws))
        self.on_form_changed()
        self.update_unfinished()
        self.update_buttons()

    def workspace_updated(self) -> None:
        """Another process wrote: new teachers, datasets and unfinished collections show;
        the form, the estimate and the messages stay as they are."""
        self.refresh()
        if self.shown is not None:
            self.update_counts()

    @staticmethod
    def _fill(box: QComboBox, items: list[str]) -> None:
        current = box.currentText()
        if [box.itemText(i) for i in range(box.count())] == items:
            return
        box.blockSignals(True)
        box.clear()
        box.addItems(items)
        if current in items:
            box.setCurrentText(current)
        box.blockSignals(False)

    def update_unfinished(self) -> None:
        """List every unfinished collection by name (the one running here is not)."""
        running = self.config.collection_name() if self.running() and self.config else None
        found = [u for u in unfinished_collections(self.ws) if u.name != running]
        current = self.unfinished_box.currentData()
        self.unfinished = {u.name: u for u in found}
        self.unfinished_box.blockSignals(True)
        self.unfinished_box.clear()
        for u in found:
            self.unfinished_box.addItem(f"{u.name} — {u.state}", u.name)
        names = [u.name for u in found]
        if current in names:
            self.unfinished_box.setCurrentIndex(names.index(current))
        self.unfinished_box.blockSignals(False)
        self.unfinished_card.setVisible(bool(found))
        self.show_unfinished()

    @Slot()
    def show_unfinished(self) -> None:
        u = self.unfinished.get(self.unfinished_box.currentData() or "")
        if u is None:
            self.unfinished_label.setText("")
            return
        n = len(self.unfinished)
        head = f"{n} unfinished collection{'s' * (n > 1)}. " if n > 1 else ""
        text = f"{head}{u.name!r}: {window_words(u.line())}".rstrip(".") + "."
        if u.state == "failed":
            text += " Fix that first, then Retry."
        elif u.state == "incomplete":
            text += " Retry asks again for the failed ones only."
        else:
            text += " Resume asks only for the missing answers."
        self.unfinished_label.setText(text)
        self.resume_button.setText("Resume" if u.state == "interrupted" else "Retry")

    @Slot()
    def resume_selected(self) -> None:
        name = self.unfinished_box.currentData()
        if name:
            self.fill_from(name)

    def fill_from(self, name: str) -> CollectConfig | None:
        """Put collection `name`'s stored settings in the form and estimate what is left;
        Start then continues it."""
        try:
            config = collect_settings(self.ws, name)
        except UserError as exc:
            self.show_message(f"Cannot resume {name!r}: {window_words(str(exc))}", "error")
            return None
        self.set_config(config)
        self.config = config
        self.show_collection(name)  # the progress shown is this collection's
        self.show_message(
            f"The settings collection {name!r} ran with are in the form. Press Start to ask "
            "for the missing answers only (nothing is paid twice).",
            "info",
        )
        self.check_conflict()
        if self.conflict is None:
            self.request_estimate()
        return config

    def resume(self, name: str) -> Job | None:
        """Fill the form from `name`'s settings and start it at once (no estimate asked)."""
        config = self.fill_from(name)
        if config is None or self.conflict is not None or self.running():
            return None
        return self.launch(config)

    # -- the form ------------------------------------------------------------------------
    @Slot(bool)
    def toggle_advanced(self, on: bool) -> None:
        self.advanced_form.setVisible(on)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def config_dict(self) -> dict[str, Any]:
        return {**self.advanced_form.values(), **self.main_form.values()}

    def build_config(self) -> CollectConfig:
        return CollectConfig.from_dict(self.config_dict())

    def set_config(self, config: CollectConfig) -> None:
        data = config.to_dict()
        self.main_form.set_values(data)
        self.advanced_form.set_values(data)
        for box, value in ((self.teacher_box, config.teacher), (self.dataset_box, config.dataset)):
            if box.findText(value) < 0:
                box.addItem(value)  # a teacher or dataset removed since: the conflict says so
            box.setCurrentText(value)

    @Slot()
    def on_form_changed(self) -> None:
        if self.ws is None:
            return
        name = self.teacher_box.currentText()
        note = ""
        if name:
            try:
                t = self.ws.get_teacher(name)
            except UserError:
                t = None
            if t is not None:
                caps = t.capabilities or {}
                if t.kind == "local":
                    note = "A local teacher: free, with logprobs over its whole vocabulary."
                elif not caps:
                    note = "This teacher has not been probed: probe it in Teachers to know whether it gives logprobs."
                elif not caps.get("logprobs"):
                    note = (
                        "This teacher gives no logprobs: only text (sequence-level distillation)."
                    )
                else:
                    note = f"This teacher gives logprobs with up to {caps.get('top_logprobs')} alternatives."
                if t.kind == "openai" and not (t.price_in or t.price_out):
                    note += " It has no prices, so the cost cannot be estimated."
        self.teacher_note.setText(note)
        if self.estimate is not None and self.estimate_for != self.config_dict():
            self.estimate_label.setText("Settings changed: estimate again.")
            self.estimate = None
            if self._confirm_pending:
                self._confirm_pending = False
                self.message.clear()
        if not self.running():
            self.show_collection(self.form_collection())
        self.conflict_timer.start()

    def form_collection(self) -> str | None:
        """The collection the form would collect into, or None while it names none."""
        try:
            config = self.build_config()
        except UserError:
            return None
        return config.collection_name() if config.teacher and config.dataset else None

    def show_collection(self, name: str | None) -> None:
        """Make the progress card describe collection `name` as stored: its answers and what
        it has cost so far, without the rate, ETA or spend of a job that ran before (which
        may have been another collection, with another teacher)."""
        if name == self.shown:
            return
        self.shown = name
        self._failed_rows = []
        self.failures.set_rows([])
        self.failure_label.setText("Failures: none")
        self.rate_label.setText("")
        self.spend_label.setText("")
        self.spend_bar.hide()
        info = None
        if name is not None and self.ws is not None:
            try:
                info = outputs.get_collection(self.ws, name)
            except UserError:
                info = None
        if name is None:
            self.progress_title.setText("Choose a teacher and a dataset.")
        elif info is None:
            self.progress_title.setText(f"Collection {name!r}: not collected yet.")
        else:
            self.progress_title.setText(f"Collection {name!r}")
            if info.spend and not self._local_teacher(info.teacher_name):
                self.spend_label.setText(f"Spent so far on this collection: {usd(info.spend)}.")
        self.update_counts()

    def _local_teacher(self, name: str | None) -> bool:
        try:
            return bool(name) and self.ws.get_teacher(name).kind == "local"
        except UserError:
            return False

    @Slot()
    def check_conflict(self) -> str | None:
        """Whether the form would continue the collection of its name; said before Start."""
        self.conflict_timer.stop()
        before = self.conflict
        self.conflict = None
        if self.ws is not None and not self.running():
            try:
                config = self.build_config()
            except UserError:
                config = None  # the form's own problem is shown when it is used
            if config is not None and config.teacher and config.dataset:
                self.conflict = collect_conflict(self.ws, config)
        if self.conflict:
            self.show_message(
                f"{window_words(self.conflict)[:1].upper()}{window_words(self.conflict)[1:]}. "
                "Its answers were asked for with those settings: put them back to continue "
                "it, or give this collection another name.",
                "warning",
            )
        elif before and self.message.text.startswith(before[:1].upper() + before[1:20]):
            self.message.clear()
        self.update_buttons()
        return self.conflict

    # -- estimate ------------------------------------------------------------------------
    def _checked_config(self) -> CollectConfig | None:
        try:
            config = self.build_config()
        except UserError as exc:
            self.message.show_message(str(exc), "error")
            return None
        if not config.teacher:
            self.message.show_message("Add a teacher first (Teachers panel).", "error")
            return None
        if not config.dataset:
            self.message.show_message(
                "Import a dataset of prompts first (Datasets panel).", "error"
            )
            return None
        return config

    @Slot()
    def request_estimate(self) -> Job | None:
        config = self._checked_config()
        if config is None or self.ws is None:
            return None
        ws = self.ws
        self.estimate_for = self.config_dict()

        def estimate(sink, cancel) -> CostEstimate:
            return estimate_cost(config, ws)

        self.estimate_label.setText("Estimating (counting prompt tokens)…")
        job = self.start_job("cost estimate", estimate)
        job.succeeded.connect(self.on_estimated)
        job.errored.connect(self.on_estimate_failed)
        job.ended.connect(self.update_buttons)
        job.start()
        self.update_buttons()
        return job

    @Slot(object)
    def on_estimated(self, estimate: CostEstimate) -> None:
        if self.estimate_for != self.config_dict():  # the form changed while it was made
            self._start_after_estimate = False
            self.estimate_label.setText("Settings changed: estimate again.")
            return
        self.estimate = estimate
        self.estimate_label.setText(estimate_text(estimate))
        if estimate.requests == 0:
            self.estimate_label.setText("Nothing left to collect: every answer is stored already.")
            self._start_after_estimate = False
        elif self._start_after_estimate:
            self._start_after_estimate = False
            self.show_message(
                f"Ready. {estimate_text(estimate)}",
                "info",
                action="Start collecting",
                on_action=self.start_confirmed,
            )
            self._confirm_pending = True
        self.workspace_changed.emit()

    @Slot(object)
    def on_estimate_failed(self, info: ErrorInfo) -> None:
        self._start_after_estimate = False
        self.estimate_label.setText("No estimate: " + window_words(info.summary))

    def start_confirmed(self) -> Job | None:
        """The "Start collecting" button under an estimate."""
        if not self._confirm_pending:
            return None
        self._confirm_pending = False
        config = self._checked_config()
        if config is None or self.running():
            return None
        return self.launch(config)

    # -- start / pause / stop ------------------------------------------------------------
    @Slot()
    def start(self) -> Job | None:
        """Start: with a fresh estimate, collect; otherwise estimate first and ask."""
        config = self._checked_config()
        if config is None or self.running() or self.check_conflict():
            return None
        if self.estimate is None or self.estimate_for != self.config_dict():
            self._start_after_estimate = True
            self.request_estimate()
            return None
        return self.launch(config)

    def launch(self, config: CollectConfig) -> Job:
        ws = self.ws
        self.config = config
        self._confirm_pending = False
        self.message.clear()
        self.shown = None  # a fresh card: nothing of an earlier job stays on it
        self.show_collection(config.collection_name())
        self.progress_title.setText(f"Collecting {config.collection_name()!r}")
        self.progress.setFormat("%v / %m requests of this run (%p%)")
        self.progress.setValue(0)
        self.rate_label.setText("Starting…")
        self._rate_t0, self._rate_done0 = 0.0, 0

        def run(sink, cancel):
            return collect(config, ws, sink, cancel)

        job = self.start_job(f"collecting {config.collection_name()}", run)
        self.job = job
        job.sink.progressed.connect(self.on_progress)
        job.sink.row_finished.connect(self.on_row_finished)
        job.sink.logged.connect(self.on_log)
        job.sink.warned.connect(self.on_warning)
        job.sink.job_finished.connect(self.on_finished_event)
        job.succeeded.connect(self.on_collected)
        job.cancelled.connect(self.on_cancelled)
        job.ended.connect(self.on_ended)
        job.start()
        self.counts_timer.start()
        self.update_buttons()
        self.status_changed.emit(f"collecting {config.collection_name()}")
        return job

    def running(self) -> bool:
        return self.job is not None and self.job.running

    @Slot()
    def pause(self) -> None:
        if self.running():
            self.job.stop("paused")
            self.rate_label.setText(
                self.rate_label.text() + " — pausing: waiting for in-flight requests…"
            )
            self.pause_button.setEnabled(False)
            self.stop_button.setEnabled(False)

    @Slot()
    def stop(self) -> None:
        if self.running():
            self.job.stop("stopped by the user")
            self.rate_label.setText(
                self.rate_label.text() + " — stopping: waiting for in-flight requests…"
            )
            self.pause_button.setEnabled(False)
            self.stop_button.setEnabled(False)

    def update_buttons(self) -> None:
        running = self.running()
        busy = bool(self.running_jobs())
        self.start_button.setEnabled(self.ws is not None and not busy and not self.conflict)
        self.resume_button.setEnabled(self.ws is not None and not busy)
        self.estimate_button.setEnabled(self.ws is not None and not busy)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.main_form.setEnabled(not running)
        self.advanced_form.setEnabled(not running)

    # -- events (GUI thread) ---------------------------------------------------------------
    @Slot(object)
    def on_progress(self, event: Progress) -> None:
        if event.total is not None:
            self.progress.setMaximum(max(event.total, 1))
        self.progress.setValue(event.done)
        now = time.monotonic()
        if not self._rate_t0:
            self._rate_t0, self._rate_done0 = now, event.done
        rate = (event.done - self._rate_done0) / max(now - self._rate_t0, 1e-9)
        left = max((event.total or 0) - event.done, 0)
        eta = left / rate if rate > 0 and event.total else None
        x = event.extra
        bits = [f"{rate:.1f} requests/s" if rate else "starting…"]
        if event.total:
            bits.append(f"{left:,} requests left, ETA {duration(eta)}")
        if "concurrency" in x:
            bits.append(f"concurrency {x['concurrency']}")
        if x.get("retries"):
            bits.append(f"{x['retries']} retries")
        self.rate_label.setText(" · ".join(bits))
        budget = self.config.budget if self.config else None
        self.spend_label.setText(spend_text(event, budget))
        spent = x.get("spent_usd")
        if spent is not None and budget:
            self.spend_bar.show()
            self.spend_bar.setMaximum(1000)
            self.spend_bar.setValue(int(1000 * min(spent / budget, 1.0)))

    @Slot(object)
    def on_row_finished(self, event: RowDone) -> None:
        if event.status == "done":
            return
        self._failed_rows.append(event)
        if len(self._failed_rows) <= MAX_FAILURES_SHOWN:
            self.failures.set_rows(self._failed_rows)
        n = len(self._failed_rows)
        self.failure_label.setText(
            f"Failures: {n:,}"
            + (f" (first {MAX_FAILURES_SHOWN:,} shown)" if n > MAX_FAILURES_SHOWN else "")
        )

    @Slot(object)
    def on_log(self, event: Log) -> None:
        if event.level in ("warning", "error"):
            self.message.show_message(event.message, "warning")

    @Slot(object)
    def on_warning(self, event: WarningEvent) -> None:
        self.message.show_message(event.message, "warning")

    @Slot(object)
    def on_finished_event(self, event: Finished) -> None:
        pass  # the summary arrives with `succeeded` (on_collected)

    @Slot(object)
    def on_collected(self, summary: Any) -> None:
        unreachable = [r for r in self._failed_rows if "connection error" in r.detail]
        if unreachable and len(unreachable) * 2 >= len(self._failed_rows):
            teacher = self.config.teacher if self.config else ""
            self.show_message(
                f"{outcome_text(summary)} The teacher could not be reached ("
                f"{unreachable[0].detail[:160]}): check its base URL and that the server "
                "runs, then press Start to retry.",
                "error",
                action="Edit teacher…",
                on_action=lambda: self.fix_requested.emit("edit_teacher", teacher),
            )
        else:
            self.show_message(
                outcome_text(summary), "success" if summary.status == "done" else "warning"
            )
        self.rate_label.setText(
            f"This run: {summary.requests:,} requests in {duration(summary.elapsed)}, "
            f"{summary.retries:,} retries. The whole collection: {summary.cached:,} answers "
            "reused from the cache (never asked twice)."
        )
        self.collection_finished.emit(summary.collection)

    @Slot(str)
    def on_cancelled(self, reason: str) -> None:
        paused = self.job is not None and self.job.cancel_token.reason == "paused"
        text = window_words(reason)
        text = text[:1].upper() + text[1:]
        if paused:
            text = text.replace("; press Start to resume", "")
            self.show_message(
                f"{text}. Resume continues with the same settings.",
                "info",
                action="Resume",
                on_action=self.resume_paused,
            )
        else:
            self.show_message(text, "info")

    def resume_paused(self) -> Job | None:
        """Continue the paused collection with exactly the settings it ran with."""
        if self.config is None or self.running():
            return None
        self.set_config(self.config)
        return self.launch(self.config)

    @Slot()
    def on_ended(self) -> None:
        if self.shown is not None:
            self.progress_title.setText(f"Collection {self.shown!r}")
        if self.config is not None:
            self.status_changed.emit(f"collection {self.config.collection_name()} ended")
        self.counts_timer.stop()
        if self.job is not None and self.job.outcome == "errored":
            self.rate_label.setText("Stopped by the problem shown above.")
        self.update_counts()
        self.estimate = None  # what is left has changed: the old estimate no longer holds
        self.estimate_label.setText(NO_ESTIMATE)
        self.update_unfinished()
        self.update_buttons()
        self.workspace_changed.emit()

    @Slot()
    def update_counts(self) -> None:
        """The state counts of the collection the card describes (zeros before it exists)."""
        counts: dict[str, int] = {}
        if self.ws is not None and self.shown is not None:
            try:
                counts = outputs.collection_status_counts(self.ws, self.shown)
            except UserError:
                counts = {}
        for key, label in STATE_LABELS:
            self.state_labels[key].setText(f"{label}: {counts.get(key, 0):,}")
        if not self.running():  # idle: the whole collection's requests, as stored
            self.progress.setFormat(
                "%v / %m requests done or failed (%p%)" if counts.get("total") else "not started"
            )
            self.progress.setMaximum(max(counts.get("total", 0), 1))
            self.progress.setValue(counts.get("done", 0) + counts.get("failed", 0))

    @Slot()
    def browse_outputs(self) -> None:
        window = self.window()
        if self.shown is not None and hasattr(window, "show_panel") and "outputs" in window.panels:
            window.show_panel("outputs").show_collection(self.shown)


def estimate_text(e: CostEstimate) -> str:
    """The estimate of what is left to collect, and (apart, labelled) what the collection
    has cost so far; no money at all for a local teacher."""
    what = (
        f"Left to collect: {e.requests:,} requests (~{e.prompt_tokens:,} prompt tokens, at "
        f"most {e.max_completion_tokens:,} output tokens)"
    )
    if e.local:
        return f"{what}, by a local teacher: no cost."
    if e.priced:
        batch = " at Batch API prices" if e.batch else ""
        cost = f"Estimate for these: up to {usd(e.usd)}{batch}."
    else:
        cost = "Their cost is unknown: the teacher has no prices (set them in Teachers)."
    spent = f" Spent so far on this collection: {usd(e.spent)}." if e.spent else ""
    return f"{what}. {cost}{spent}"


def spend_text(event: Progress, budget: float | None) -> str:
    """A running collection's money, from its Progress numbers: spent so far on the whole
    collection (`spent_usd`, every run of it) and, labelled apart, the estimate for the
    requests still left (`estimate_usd` covered the `total` queued when the job started);
    empty for a local teacher, whose events carry neither."""
    x = event.extra
    spent, estimate = x.get("spent_usd"), x.get("estimate_usd")
    parts = []
    if spent is not None:
        of = f" of its {usd(budget)} budget" if budget else ""
        parts.append(f"Spent so far on this collection: {usd(spent)}{of}")
    left = max((event.total or 0) - event.done, 0)
    if estimate is not None and left:
        share = estimate * left / event.total
        parts.append(f"estimate for the {left:,} requests left: up to {usd(share)}")
    text = "; ".join(parts)
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def outcome_text(summary: Any) -> str:
    """How a collection ended, in the window's words (the core's message names CLI commands)."""
    c = summary.counts
    done, total, failed = c.get("done", 0), c.get("total", 0), c.get("failed", 0)
    text = f"Collection {summary.collection!r}: {done:,} of {total:,} answers stored"
    text += f"; spent on it so far: {usd(summary.spent)}." if summary.spent else "."
    if summary.status == "stopped":
        text += f" Stopped by the budget ({summary.message.split(';')[0]}); raise the budget and press Start to continue."
    elif failed:
        text += f" {failed:,} failed (listed below; filter Outputs by state “failed”); press Start to retry them."
    elif c.get("queued"):
        text += " Some are still queued: press Start to continue."
    return text
