"""Runs: every run in the workspace, overlaid curves, live tailing, resume, evaluate, export.

Curves come from the workspace's metrics table, so a run started from the CLI or under
torchrun shows up and updates live: a timer tails `ws.metrics(run_id, after_rowid)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from kdstudio import evaluate as ev
from kdstudio import trackers
from kdstudio.collect import store as outputs
from kdstudio.data import store
from kdstudio.distill import runs
from kdstudio.errors import UserError
from kdstudio.events import Progress
from kdstudio.gui import file_dialogs
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.plots import PlotBoard
from kdstudio.gui.problems import window_words
from kdstudio.gui.table_models import Column, ListTableModel
from kdstudio.gui.trackers import TensorBoard
from kdstudio.gui.widgets import Selection, escape, fmt_time, heading, hint, row_table
from kdstudio.gui.workers import ErrorInfo, Job

STATUS_COLOURS = {
    "running": "#2f6fdb",
    "finished": "#2e9b4f",
    "failed": "#d23c3c",
    "diverged": "#c2185b",  # its loss blew up: not a crash, and not a result to use
    "interrupted": "#c98a06",
    "stopped": "#888888",
}
TAIL_MS = 1000


def _teachers(run: runs.Run, teachers: dict[str, str | None]) -> str:
    """The teachers behind a run's collections, each once (imported answers: none)."""
    names = [teachers.get(c) for c in run.collections]
    return ", ".join(dict.fromkeys(n for n in names if n))


def _total(run: runs.Run) -> Any:
    return run.summary.get("total_steps") or (run.config.get("optim", {}).get("max_steps") or None)


@dataclass(frozen=True)
class RunRow:
    """A run as the table shows it: its record and the latest value of each metric, read by
    the one function `kdstudio runs list` reads them with (`runs.latest_metrics`), so a
    running run shows the same loss in both at the same moment."""

    run: runs.Run
    latest: dict[str, tuple[int, float]]
    teachers: str = ""  # the teacher of each collection it trains on

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)

    def metric(self, name: str) -> str:
        """As `runs list` prints it (4 decimals), or nothing before the first value."""
        return f"{self.latest[name][1]:.4f}" if name in self.latest else ""


RUN_COLUMNS = [
    Column("Run", lambda r: r.name),
    Column("Status", lambda r: r.status, colour=lambda r: STATUS_COLOURS.get(r.status)),
    Column("Method", lambda r: r.method),
    Column("Collection", lambda r: r.collection),
    Column("Teachers", lambda r: r.teachers),
    Column(
        "Step",
        lambda r: f"{r.step:,}" + (f" / {_total(r):,}" if _total(r) else ""),
        align_right=True,
    ),
    Column("Loss", lambda r: r.metric("loss"), align_right=True),
    Column("Eval loss", lambda r: r.metric("eval_loss"), align_right=True),
    Column("GPUs", lambda r: r.world_size, align_right=True),
    Column("Updated", lambda r: fmt_time(r.updated_at)),
    Column("Error", lambda r: r.error or "", tooltip=True),  # elided to the width left
]


def _score(item: Any, side: str) -> str:
    value = item.metrics.get(side, {}).get("rouge_l")
    return "" if value is None else f"{value:.3f}"  # as the summary shows them


@dataclass(frozen=True)
class EvalRow:
    """A held-out prompt of an evaluation with the dataset row it came from (its system
    turn, earlier turns and reference answer); `row` is None when that row is gone."""

    item: ev.EvalItem
    row: store.DatasetRow | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.item, name)

    @property
    def system(self) -> str:
        return (self.row.system or "") if self.row else ""


EVAL_COLUMNS = [
    Column("#", lambda it: it.idx, align_right=True),
    Column("System", lambda it: it.system, tooltip=True, max_chars=60),
    Column("Prompt", lambda it: it.prompt, tooltip=True, max_chars=80),
    Column("Teacher", lambda it: it.teacher, tooltip=True, max_chars=60),
    Column("Student before", lambda it: it.student_before, tooltip=True, max_chars=60),
    Column("Student after", lambda it: it.student_after, tooltip=True, max_chars=60),
    Column("ROUGE-L before", lambda it: _score(it, "before"), align_right=True),
    Column("ROUGE-L after", lambda it: _score(it, "after"), align_right=True),
]
METRIC_LABELS = {
    "loglik": "log-likelihood / token",
    "exact_match": "exact match",
    "f1": "F1 (words)",
    "rouge_l": "ROUGE-L",
    "kl_to_teacher": "KL to the teacher (lower is better)",
    "teacher_nll": "teacher NLL / token of the answer (lower is better)",
}


class RunsPanel(Panel):
    title = "Runs"
    key = "runs"
    resume_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._tail: dict[int, int] = {}  # run id -> last metrics rowid drawn
        self._shown: list[int] = []
        self.job: Job | None = None
        self._diverged_shown: str | None = None  # the diverged run whose message is shown

        self.model = ListTableModel(RUN_COLUMNS)
        self.table = row_table(self.model, Selection.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        # Every column as wide as its longest value (a running run's "1,200 / 1,200"
        # included, as it grows); the error takes what is left, elided, whole in a tooltip.
        header = self.table.horizontalHeader()
        for i, column in enumerate(RUN_COLUMNS):
            mode = QHeaderView.ResizeMode.ResizeToContents
            header.setSectionResizeMode(
                i, QHeaderView.ResizeMode.Stretch if column.tooltip else mode
            )
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.selectionModel().selectionChanged.connect(self.on_selection_changed)

        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Continue the run from its last checkpoint (in the Train panel)"
        )
        self.eval_button = QPushButton("Evaluate")
        self.eval_button.setToolTip(
            "Generate answers to the held-out prompts: student before vs after vs teacher"
        )
        self.eval_limit = QSpinBox()
        self.eval_limit.setRange(0, 100_000)
        self.eval_limit.setSpecialValueText("all held-out prompts")
        self.eval_limit.setPrefix("at most ")
        self.eval_limit.setSuffix(" prompts")
        self.eval_limit.setValue(0)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip(
            "Write the student as a Hugging Face model folder with a model card"
        )
        self.merge_lora = QCheckBox("merge LoRA")
        self.cancel_button = QPushButton("Cancel")
        self.tensorboard = TensorBoard(self)
        self.tensorboard.opened.connect(self.on_tensorboard_opened)
        self.tensorboard.failed.connect(self.on_tensorboard_failed)
        self.tensorboard_button = QPushButton("Open in TensorBoard")
        self.tensorboard_button.setToolTip(
            "Start TensorBoard on the runs that report to it (run.report_to) and open it in "
            "the browser; it stops when the window closes"
        )
        self.tensorboard_button.clicked.connect(self.open_tensorboard)
        self.tensorboard_button.setVisible(trackers.installed("tensorboard"))
        self.resume_button.clicked.connect(self.resume_selected)
        self.eval_button.clicked.connect(self.evaluate_selected)
        self.export_button.clicked.connect(self.export_dialog)
        self.cancel_button.clicked.connect(self.cancel_job)
        self.job_progress = QProgressBar()
        self.job_progress.hide()
        self.job_label = QLabel("")
        buttons = QHBoxLayout()
        for w in (
            self.resume_button,
            self.eval_button,
            self.eval_limit,
            self.export_button,
            self.merge_lora,
            self.cancel_button,
            self.tensorboard_button,
        ):
            buttons.addWidget(w)
        buttons.addWidget(self.job_progress, 1)
        buttons.addWidget(self.job_label, 1)
        self.cancel_button.hide()

        self.board = PlotBoard(overlay=True, settings_key="runs")
        self.board_hint = hint(
            "Select one or more runs to overlay their curves. Running runs (also ones started from the CLI or torchrun) update live."
        )

        # -- evaluation view -------------------------------------------------------------
        self.eval_box = QComboBox()
        self.eval_box.currentIndexChanged.connect(self.show_evaluation)
        self.summary_view = QTextBrowser()
        self.summary_view.setMinimumHeight(170)
        self.items_model = ListTableModel(EVAL_COLUMNS)
        self.items_table = row_table(self.items_model)
        # Texts share the width (they elide; the panes below show them whole); numbers and
        # their headers ("ROUGE-L before") always fit.
        header = self.items_table.horizontalHeader()
        for i, column in enumerate(EVAL_COLUMNS):
            mode = (
                QHeaderView.ResizeMode.Stretch
                if column.tooltip
                else QHeaderView.ResizeMode.ResizeToContents
            )
            header.setSectionResizeMode(i, mode)
        self.items_table.selectionModel().currentRowChanged.connect(self.show_eval_item)
        self.side = {k: QTextBrowser() for k in ("prompt", "teacher", "before", "after")}
        side = QGridLayout()
        for i, (key, title) in enumerate(
            (
                ("prompt", "Prompt"),
                ("teacher", "Teacher"),
                ("before", "Student before"),
                ("after", "Student after"),
            )
        ):
            side.addWidget(heading(title), 0, i)
            side.addWidget(self.side[key], 1, i)
        eval_tab = QWidget()
        el = QVBoxLayout(eval_tab)
        row = QHBoxLayout()
        row.addWidget(QLabel("Evaluation"))
        row.addWidget(self.eval_box, 1)
        el.addLayout(row)
        esplit = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        tl = QHBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.summary_view, 1)
        tl.addWidget(self.items_table, 2)
        self.summary_view.setMinimumWidth(430)
        esplit.addWidget(top)
        sw = QWidget()
        sw.setLayout(side)
        esplit.addWidget(sw)
        el.addWidget(esplit, 1)

        curves = QWidget()
        cl = QVBoxLayout(curves)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.board_hint)
        cl.addWidget(self.board, 1)
        self.tabs = QTabWidget()
        self.tabs.addTab(curves, "Curves")
        self.tabs.addTab(eval_tab, "Evaluation")

        top_box = QWidget()
        tb = QVBoxLayout(top_box)
        tb.setContentsMargins(0, 0, 0, 0)
        tb.addWidget(self.table, 1)
        tb.addLayout(buttons)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top_box)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 3)
        split.setSizes([220, 620])
        self.body.addWidget(split, 1)

        self.tail_timer = QTimer(self)
        self.tail_timer.setInterval(TAIL_MS)
        self.tail_timer.timeout.connect(self.tail)
        self.tail_timer.start()
        self.update_buttons()

    # -- TensorBoard ---------------------------------------------------------------------
    @Slot()
    def open_tensorboard(self) -> None:
        if self.ws is None:
            return
        logdir = trackers.tensorboard_root(self.ws)
        if not logdir.is_dir() or not any(logdir.iterdir()):
            self.message.show_message(
                'No run reports to TensorBoard yet: tick TensorBoard under "Report to" in the '
                "Train panel (run.report_to), then train.",
                "info",
            )
            return
        self.message.show_message(f"Starting TensorBoard on {logdir}…", "info")
        self.tensorboard.open(logdir)

    @Slot(str)
    def on_tensorboard_opened(self, url: str) -> None:
        self.message.show_message(f"TensorBoard is at {url} (opened in the browser).", "success")

    @Slot(str)
    def on_tensorboard_failed(self, reason: str) -> None:
        self.message.show_message(reason, "error")

    def set_workspace(self, ws) -> None:
        self.tensorboard.stop()  # it shows the previous workspace's runs
        super().set_workspace(ws)

    # -- the list ------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.ws is None:
            return
        selected = {r.name for r in self.selected_runs()}
        teachers = outputs.collection_teachers(self.ws)
        all_runs = [
            RunRow(r, runs.latest_metrics(self.ws, r.id), _teachers(r, teachers))
            for r in runs.list_runs(self.ws)
        ]
        old = [r.name for r in self.model.rows]
        if old == [r.name for r in all_runs]:
            for i, r in enumerate(all_runs):
                if r != self.model.rows[i]:
                    self.model.replace_row(i, r)
        else:
            self.model.set_rows(all_runs)
            for i, r in enumerate(all_runs):
                if r.name in selected:
                    self.table.selectionModel().select(
                        self.model.index(i, 0),
                        self.table.selectionModel().SelectionFlag.Select
                        | self.table.selectionModel().SelectionFlag.Rows,
                    )
            if not selected and all_runs:
                self.table.selectRow(len(all_runs) - 1)
        if not all_runs:
            self.message.show_message(
                "No runs yet: start one in the Train panel (or `kdstudio train`).", "info"
            )
        elif self.message.text.startswith("No runs"):
            self.message.clear()
        self.update_buttons()
        chosen = self.selected_runs()
        self.show_divergence(chosen[0] if len(chosen) == 1 else None)  # it may diverge now

    def selected_runs(self) -> list[RunRow]:
        return [self.model.row(i.row()) for i in self.table.selectionModel().selectedRows()]

    def select_run(self, name: str) -> None:
        for i, r in enumerate(self.model.rows):
            if r.name == name:
                self.table.selectRow(i)

    @Slot()
    def on_selection_changed(self) -> None:
        chosen = self.selected_runs()
        ids = [r.id for r in chosen]
        if ids != self._shown:
            self.show_curves(chosen)
        self.fill_evaluations()
        self.update_buttons()
        self.show_divergence(chosen[0] if len(chosen) == 1 else None)

    def show_divergence(self, one: RunRow | None) -> None:
        """A selected diverged run says what happened and what to change (its stored
        message), with the button that puts those changes in the Train panel's form."""
        if one is not None and one.status == "diverged":
            if self._diverged_shown == one.name:
                return
            text = window_words(one.error or f"run {one.name} diverged")
            name = one.name
            self.show_message(
                text[:1].upper() + text[1:],
                "error",
                action="New run with these changes",
                on_action=lambda: self.fix_requested.emit("new_run_from", name),
            )
            self._diverged_shown = name
        elif self._diverged_shown is not None:
            self._diverged_shown = None
            self.message.clear()

    def show_curves(self, chosen: list[RunRow]) -> None:
        """Curves of the chosen runs: one run in a colour per metric, several in a colour
        per run. Adding a run loads only that run; removing one takes only its curves away."""
        wanted = {r.id for r in chosen}
        for run_id in [i for i in self._shown if i not in wanted]:
            self.board.remove_run(str(run_id))
            self._tail.pop(run_id, None)
        for r in chosen:
            self.board.set_run_label(str(r.id), r.name)
            if r.id not in self._tail:
                self.board.set_run_method(str(r.id), r.method)
        self.board.overlay = len(chosen) > 1
        self._shown = [r.id for r in chosen]
        self.tail()
        gpu = self.board.plot_for("gpu_mem_gb")
        if gpu is not None and chosen and self.board.point_count("gpu_mem_gb") == 0:
            gpu.set_empty_text("no GPU: CPU runs")

    def update_buttons(self) -> None:
        chosen = self.selected_runs()
        one = chosen[0] if len(chosen) == 1 else None
        busy = self.job is not None and self.job.running
        self.resume_button.setEnabled(
            bool(one) and one.status in ("stopped", "interrupted", "failed") and not busy
        )
        can_use = bool(one) and one.status != "running" and not busy
        self.eval_button.setEnabled(can_use)
        self.export_button.setEnabled(can_use)
        self.merge_lora.setVisible(bool(one) and bool(one.config.get("lora")))
        self.cancel_button.setVisible(busy)

    # -- curves: load and tail -------------------------------------------------------------
    @Slot()
    def tail(self) -> None:
        """Draw metrics stored since the last look (the whole history on the first look)."""
        if self.ws is None or not self.isVisible() and self._tail:
            return
        for run_id in self._shown:
            self._tail[run_id] = self.board.load_stored(
                self.ws, run_id, str(run_id), self._tail.get(run_id, 0)
            )
        if self.isVisible():
            self.refresh()  # statuses and steps of runs other processes write

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if self.ws is not None:
            self.refresh()
            self.tail()

    # -- resume ----------------------------------------------------------------------------
    @Slot()
    def resume_selected(self) -> None:
        chosen = self.selected_runs()
        if len(chosen) == 1:
            self.resume_requested.emit(chosen[0].name)

    # -- evaluate and export ----------------------------------------------------------------
    def _run_job(self, name: str, fn, on_success) -> Job:
        job = self.start_job(name, fn)
        self.job = job
        job.sink.progressed.connect(self.on_job_progress)
        job.succeeded.connect(on_success)
        job.cancelled.connect(self.on_job_cancelled)
        job.ended.connect(self.on_job_ended)
        self.job_progress.show()
        self.job_progress.setRange(0, 0)
        self.job_label.setText(f"{name}…")
        job.start()
        self.update_buttons()
        return job

    @Slot()
    def evaluate_selected(self) -> Job | None:
        chosen = self.selected_runs()
        if len(chosen) != 1 or self.ws is None:
            return None
        run, ws = chosen[0], self.ws
        try:
            config = ev.EvalConfig(run=run.name, limit=self.eval_limit.value() or None)
        except UserError as exc:
            self.message.show_message(str(exc), "error")
            return None

        def run_eval(sink, cancel):
            return ev.evaluate(config, ws, sink, cancel)

        return self._run_job(f"evaluating {run.name}", run_eval, self.on_evaluated)

    @Slot()
    def export_dialog(self) -> None:
        chosen = self.selected_runs()
        if len(chosen) != 1 or self.ws is None:
            return
        folder = file_dialogs.existing_folder(
            self, "Export the student into an empty folder", str(self.ws.exports_dir)
        )
        if folder:
            self.export_selected(
                Path(folder) / chosen[0].name if any(Path(folder).iterdir()) else Path(folder)
            )

    def export_selected(self, out: Path) -> Job | None:
        from kdstudio.export import ExportConfig, export

        chosen = self.selected_runs()
        if len(chosen) != 1 or self.ws is None:
            return None
        run, ws = chosen[0], self.ws
        try:
            config = ExportConfig(run=run.name, out=out, merge_lora=self.merge_lora.isChecked())
        except UserError as exc:
            self.message.show_message(str(exc), "error")
            return None

        def run_export(sink, cancel):
            return export(config, ws, sink, cancel)

        return self._run_job(f"exporting {run.name}", run_export, self.on_exported)

    @Slot()
    def cancel_job(self) -> None:
        if self.job is not None and self.job.running:
            self.job.stop("cancelled from the window")
            self.job_label.setText("stopping after the current batch…")

    @Slot(object)
    def on_job_progress(self, event: Progress) -> None:
        if event.total:
            self.job_progress.setRange(0, event.total)
            self.job_progress.setValue(event.done)
        extra = " · ".join(
            f"{k.replace('_', ' ')} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in event.extra.items()
        )
        self.job_label.setText(
            f"{event.done:,}/{event.total or '?'} {event.unit}s"
            + (f" · {extra}" if extra else "")
            + (f" · {event.message}" if event.message else "")
        )

    @Slot(object)
    def on_evaluated(self, evaluation: ev.Evaluation) -> None:
        self.message.show_message(
            f"Evaluation {evaluation.id} of {evaluation.run} finished on {evaluation.summary.get('n', 0)} prompts.",
            "success",
        )
        self.fill_evaluations(select=evaluation.id)
        self.tabs.setCurrentIndex(1)

    @Slot(object)
    def on_exported(self, result: Any) -> None:
        self.message.show_message(
            f"Exported the student ({result.kind}) to {result.path}: load it with AutoModelForCausalLM.from_pretrained.",
            "success",
        )

    @Slot(str)
    def on_job_cancelled(self, reason: str) -> None:
        self.message.show_message(reason, "info")
        self.fill_evaluations()

    @Slot()
    def on_job_ended(self) -> None:
        self.job_progress.hide()
        self.job_label.setText("")
        self.update_buttons()

    def show_error(self, info: ErrorInfo) -> None:
        super().show_error(info)

    # -- the evaluation view ---------------------------------------------------------------
    def fill_evaluations(self, select: int | None = None) -> None:
        chosen = self.selected_runs()
        self.eval_box.blockSignals(True)
        self.eval_box.clear()
        if len(chosen) == 1 and self.ws is not None:
            evals = ev.list_evaluations(self.ws, chosen[0].name)
            for e in reversed(evals):
                label = f"#{e.id} · step {e.step} ({e.checkpoint or '?'}) · {e.status} · {e.summary.get('n', 0)} prompts · {fmt_time(e.created_at)}"
                self.eval_box.addItem(label, e.id)
            if select is not None:
                self.eval_box.setCurrentIndex(max(0, self.eval_box.findData(select)))
        self.eval_box.blockSignals(False)
        self.show_evaluation()

    @Slot()
    def show_evaluation(self) -> None:
        eval_id = self.eval_box.currentData()
        for view in self.side.values():
            view.clear()
        if eval_id is None or self.ws is None:
            self.items_model.set_rows([])
            self.summary_view.setHtml(
                "<i>No evaluation yet: select a finished or stopped run and click Evaluate.</i>"
            )
            return
        e = ev.get_evaluation(self.ws, eval_id)
        items = ev.eval_items(self.ws, eval_id)
        rows = store.rows_by_id(self.ws, [it.row_id for it in items if it.row_id is not None])
        self.summary_view.setHtml(summary_html(e))
        self.items_model.set_rows([EvalRow(it, rows.get(it.row_id)) for it in items])
        # a System column only when some prompt has a system turn
        self.items_table.setColumnHidden(1, not any(r.system for r in self.items_model.rows))
        if self.items_model.rowCount():
            self.items_table.selectRow(0)

    @Slot()
    def show_eval_item(self) -> None:
        index = self.items_table.currentIndex()
        if not index.isValid():
            return
        it = self.items_model.row(index.row())
        m = it.metrics

        def block(text: str, scores: dict | None = None) -> str:
            tail = ""
            if scores:
                tail = (
                    "<p style='color:gray'>"
                    + " · ".join(
                        f"{METRIC_LABELS.get(k, k)} {v:.3f}"
                        for k, v in scores.items()
                        if isinstance(v, (int, float))
                        and (k in METRIC_LABELS or k.endswith("vs reference"))
                    )
                    + "</p>"
                )
            return f"<div style='white-space:pre-wrap'>{escape(text)}</div>{tail}"

        ref = m.get("reference") or {}
        self.side["prompt"].setHtml(prompt_html(it))  # the system turn and reference too
        self.side["teacher"].setHtml(
            block(it.teacher, {**m.get("teacher", {}), **_against(ref.get("teacher"))})
        )
        self.side["before"].setHtml(
            block(it.student_before, {**m.get("before", {}), **_against(ref.get("before"))})
        )
        self.side["after"].setHtml(
            block(it.student_after, {**m.get("after", {}), **_against(ref.get("after"))})
        )


def _against(scores: dict | None) -> dict:
    """Scores against the reference answer, labelled as such."""
    return {f"{METRIC_LABELS.get(k, k)} vs reference": v for k, v in (scores or {}).items()}


def prompt_html(it: EvalRow) -> str:
    """The prompt as the student saw it: the system turn and earlier turns before the
    question, and the dataset's reference answer when it has one."""
    turns = it.row.messages if it.row else [{"role": "user", "content": it.prompt}]
    parts = [
        f"<p><b>{escape(m.get('role', ''))}</b><br>"
        f"<span style='white-space:pre-wrap'>{escape(str(m.get('content', '')))}</span></p>"
        for m in turns
    ]
    if it.row and it.row.reference:
        parts.append(
            "<p style='color:gray'><b>reference answer (from the dataset)</b><br>"
            f"<span style='white-space:pre-wrap'>{escape(it.row.reference)}</span></p>"
        )
    return "".join(parts)


def summary_html(e: ev.Evaluation) -> str:
    """The before / after / teacher table of an evaluation (after in green when better)."""
    s = e.summary

    def cell(v: Any, better: bool = False) -> str:
        text = f"{v:.3f}" if isinstance(v, (int, float)) else "–"
        style = " style='color:#2e9b4f'" if better else ""
        return f"<td align=right{style}>{text}</td>"

    def rows_of(metrics: dict) -> list[str]:
        rows = []
        for name, row in metrics.items():
            before, after = row.get("before"), row.get("after")
            if before is None and after is None:
                continue  # kl_to_teacher / teacher_nll where the data has no way to them
            numbers = isinstance(before, (int, float)) and isinstance(after, (int, float))
            lower = name in ev.LOWER_IS_BETTER
            better = numbers and (after < before if lower else after > before)
            rows.append(
                f"<tr><td>{METRIC_LABELS.get(name, name)}</td>{cell(before)}"
                f"{cell(after, better)}{cell(row.get('teacher'))}</tr>"
            )
        return rows

    rows = rows_of(s.get("metrics", {}))
    head = (
        f"<b>{escape(e.run)}</b> at {escape(str(s.get('checkpoint', e.checkpoint)))}: "
        f"{s.get('n', 0)} of {s.get('planned', s.get('n', 0))} held-out prompts ({e.status})"
    )
    table = (
        "<table cellspacing=0 cellpadding=3><tr><th></th><th>student before</th>"
        "<th>student after</th><th>teacher</th></tr>" + "".join(rows) + "</table>"
    )
    note = f"<p style='color:gray'>{escape(s.get('note', ''))}</p>" if s.get("note") else ""
    reference = s.get("reference")
    if reference:
        note += (
            f"<p><b>Against the dataset's reference answers</b> ({reference['n']} prompts "
            "have one; the teacher is scored like the students):</p>"
            "<table cellspacing=0 cellpadding=3><tr><th></th><th>student before</th>"
            "<th>student after</th><th>teacher</th></tr>"
            + "".join(rows_of(reference["metrics"]))
            + "</table>"
        )
    return head + table + note
