"""Train: a form bound to the training config, pre-flight, start/stop/resume, live plots.

Resuming is two steps: Resume (here, or in Runs) puts the run's stored settings and curves
in the form and plots, and says which form changes a resumed run would not use; the Start
button, now "Resume RUN", continues it from its last checkpoint. A new run whose name is
taken is refused before Start, not after.

The run itself is the core's `Trainer(config, ws, sink, cancel)` in a QThread; its metrics
come back through a QtSink and are drawn by a PlotBoard on a ~50 ms timer, within a budget
of 1% of the GUI thread (the whole run, downsampled, never a sliding window). The equivalent `kdstudio train` command and its TOML
are shown and copyable, and the TOML is saved with every run started here.
"""

from __future__ import annotations

import html
import json
import shlex
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from kdstudio.collect import store as outputs
from kdstudio.config import dumps_toml
from kdstudio.data.importer import plural
from kdstudio.distill import plan, runs
from kdstudio.distill.config import (
    DataConfig,
    DistillConfig,
    LoraConfig,
    OptimConfig,
    RunConfig,
    StudentConfig,
    TrainConfig,
)
from kdstudio.errors import UserError
from kdstudio.events import Failed, Finished, Log, Metrics, Progress
from kdstudio.events import Warning as WarningEvent
from kdstudio.formatting import duration
from kdstudio.gui import file_dialogs
from kdstudio.gui import settings as gui_settings
from kdstudio.gui.collection_picker import CollectionPicker
from kdstudio.gui.config_form import SectionForm
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.plots import PlotBoard
from kdstudio.gui.problems import window_words
from kdstudio.gui.trackers import TrackerChoice
from kdstudio.gui.widgets import Card, FieldNote, PathPicker, hint
from kdstudio.gui.workers import Job
from kdstudio.model_folder import model_folder_problem
from kdstudio.resume import run_conflicts, stopped_runs

FORM_SETTING = "train/form"  # the form's values (JSON), restored when the window opens
LOSS_BG = "#cdeccd"
LOSS_BG_DARK = "#1f5a2a"
TRAIN_PROGRESS_HZ = 2.0  # progress bar and label updates a second while training


def student_sees_html(preview: Any, dark: bool) -> str:
    """Tokens of a rendered example; the loss-carrying ones highlighted."""
    bg = LOSS_BG_DARK if dark else LOSS_BG
    parts = []
    for tok in preview.tokens:
        text = html.escape(tok["text"]).replace("\n", "↵<br>")
        if tok["loss"]:
            parts.append(f'<span style="background-color:{bg}">{text}</span>')
        else:
            parts.append(f'<span style="color:gray">{text}</span>')
    return f'<div style="font-family:monospace; white-space:pre-wrap">{"".join(parts)}</div>'


def _total_steps(run: runs.Run) -> int | None:
    """The steps a run is configured for (known once it started, or set in its config)."""
    total = run.summary.get("total_steps") or run.config.get("optim", {}).get("max_steps")
    return int(total) if total else None


def log_line(kind: str, event: dict[str, Any]) -> str | None:
    """The run log's line for an event, live or as the workspace stored it; None for
    events that are not log lines (progress, metrics)."""
    if kind in ("Log", "Finished"):
        return event.get("message", "")
    if kind == "Warning":
        where = f" ({event['where']})" if event.get("where") else ""
        return f"⚠ {event.get('message', '')}{where}"
    if kind == "Failed":
        if event.get("details") == "diverged":
            return "✗ " + event.get("message", "")  # the message starts "run NAME diverged"
        return ("stopped: " if event.get("cancelled") else "failed: ") + event.get("message", "")
    return None


class TrainPanel(Panel):
    title = "Train"
    key = "train"
    window_actions = (("&Stop training", "Ctrl+.", "stop"),)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job: Job | None = None
        self.run_name: str | None = None
        self.resume_target: str | None = None  # Start continues this run (its settings)
        self.conflict: str | None = None  # a new run's name is taken
        self.last_preflight: Any = None  # the last PreflightReport shown
        self._t0 = 0.0
        self._step0 = 0

        # -- the form, one card per section --------------------------------------------
        self.forms: dict[str, SectionForm] = {
            "student": SectionForm(StudentConfig),
            # which collections: the picker below (one key or two, and the weights)
            "data": SectionForm(DataConfig, skip=("collection", "collections", "weights")),
            "distill": SectionForm(DistillConfig),
            "optim": SectionForm(OptimConfig),
            "run": SectionForm(RunConfig),
            "lora": SectionForm(LoraConfig),
        }
        self.student_path = PathPicker(
            "Student model folder",
            placeholder="a Hugging Face model folder",
            problem=model_folder_problem,
        )
        self.forms["student"].replace_widget("path", self.student_path)
        self.student_path.textChanged.connect(self.on_form_changed)
        self.collections = CollectionPicker()
        self.collections.setToolTip(DataConfig.__dataclass_fields__["collections"].metadata["help"])
        self.collections.changed.connect(self.on_form_changed)
        self.forms["data"].layout_.insertRow(0, self.collections)  # the whole width
        self.teacher_box = QComboBox()
        self.teacher_box.setEditable(True)
        self.teacher_box.currentTextChanged.connect(self.on_form_changed)
        self.forms["distill"].replace_widget("teacher", self.teacher_box)
        self.report_to = TrackerChoice()
        self.report_to.changed.connect(self.on_form_changed)
        self.forms["run"].replace_widget("report_to", self.report_to)
        self.use_lora = QCheckBox("Train LoRA adapters instead of the full model (needs peft)")
        self.use_lora.toggled.connect(self.forms["lora"].setEnabled)
        self.use_lora.toggled.connect(self.on_form_changed)
        self.forms["lora"].setEnabled(False)
        for form in self.forms.values():
            form.changed.connect(self.on_form_changed)
        for name in ("method", "divergence"):
            self.forms["distill"].widgets[name].currentIndexChanged.connect(
                self.update_method_fields
            )

        form_box = QWidget()
        fl = QVBoxLayout(form_box)
        fl.setContentsMargins(0, 0, 6, 0)
        titles = {
            "student": "Student",
            "data": "Data",
            "distill": "Method",
            "optim": "Optimisation",
            "run": "Run",
            "lora": "LoRA",
        }
        for key, form in self.forms.items():
            card = Card(titles[key])
            if key == "lora":
                card.body.addWidget(self.use_lora)
            if key == "distill":
                self.jsd_hint = hint(
                    "JSD(β) tends to 0 at β = 0 and β = 1: those ends are defined as forward and reverse KL."
                )
                card.body.addWidget(form)
                card.body.addWidget(self.jsd_hint)
            else:
                card.body.addWidget(form)
            if key == "optim":
                self.lr_note = FieldNote()  # a learning rate far outside the usual range
                card.body.addWidget(self.lr_note)
            fl.addWidget(card)
        fl.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(form_box)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(380)

        # -- controls and progress -----------------------------------------------------
        self.preflight_button = QPushButton("Pre-flight")
        self.preflight_button.setToolTip(
            "Check the student, the data, the method and the memory without starting a run"
        )
        self.start_button = QPushButton("Start training")
        self.add_shortcut("Ctrl+Return", self.start)
        self.start_button.setToolTip("Start a run with this config (Ctrl+Enter)")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish the current step, save a checkpoint and stop (Ctrl+.)")
        self.resume_box = QComboBox()
        self.resume_box.setMinimumWidth(220)
        self.resume_button = QPushButton("Resume…")
        self.resume_button.setToolTip(
            "Put a stopped or interrupted run's settings and curves here; then press "
            "“Resume RUN” to continue it from its last checkpoint"
        )
        self.preflight_button.clicked.connect(self.preflight)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume_selected)
        controls = QHBoxLayout()
        for w in (self.preflight_button, self.start_button, self.stop_button):
            controls.addWidget(w)
        controls.addStretch(1)
        controls.addWidget(QLabel("Stopped runs"))
        controls.addWidget(self.resume_box)
        controls.addWidget(self.resume_button)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m steps")
        self.show_steps(0, OptimConfig().max_steps or None, running=False)  # the form's, below
        self.progress.setValue(0)
        self.progress_label = QLabel("No run yet.")
        self.progress_label.setWordWrap(True)  # a long reason wraps, never widens the panel
        self.board = PlotBoard(settings_key="train")

        # -- bottom tabs: what the student sees, pre-flight/log, CLI ----------------------
        self.example_index = QSpinBox()
        self.example_index.setRange(0, 10_000_000)
        self.example_index.setPrefix("example ")
        self.preview_button = QPushButton("Show what the student sees")
        self.preview_button.clicked.connect(self.preview)
        self.preview_view = QTextBrowser()
        self.preview_info = QLabel(
            "Renders one example with the student's chat template; highlighted tokens carry the loss."
        )
        self.preview_info.setWordWrap(True)
        sees = QWidget()
        sl = QVBoxLayout(sees)
        row = QHBoxLayout()
        row.addWidget(self.example_index)
        row.addWidget(self.preview_button)
        row.addStretch(1)
        sl.addLayout(row)
        sl.addWidget(self.preview_info)
        sl.addWidget(self.preview_view, 1)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.command_view = QLineEdit()
        self.command_view.setReadOnly(True)
        self.toml_view = QPlainTextEdit()
        self.toml_view.setReadOnly(True)
        copy_cmd = QPushButton("Copy command")
        copy_cmd.clicked.connect(self.copy_command)
        copy_toml = QPushButton("Copy TOML")
        copy_toml.clicked.connect(self.copy_toml)
        save_toml = QPushButton("Save TOML…")
        save_toml.clicked.connect(self.save_toml_dialog)
        cli = QWidget()
        cl = QVBoxLayout(cli)
        cl.addWidget(
            hint(
                "The same run from a terminal (or under torchrun --nproc-per-node N -m kdstudio …):"
            )
        )
        crow = QHBoxLayout()
        crow.addWidget(self.command_view, 1)
        crow.addWidget(copy_cmd)
        cl.addLayout(crow)
        cl.addWidget(self.toml_view, 1)
        brow = QHBoxLayout()
        brow.addStretch(1)
        brow.addWidget(copy_toml)
        brow.addWidget(save_toml)
        cl.addLayout(brow)
        self.tabs = QTabWidget()
        self.tabs.addTab(sees, "What the student sees")
        self.tabs.addTab(self.log, "Pre-flight and log")
        self.tabs.addTab(cli, "CLI and TOML")

        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(6, 0, 0, 0)
        rl.addLayout(controls)
        rl.addWidget(self.progress)
        rl.addWidget(self.progress_label)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(self.board)
        vsplit.addWidget(self.tabs)
        vsplit.setStretchFactor(0, 3)
        vsplit.setStretchFactor(1, 2)
        vsplit.setSizes([480, 300])
        rl.addWidget(vsplit, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([420, 1000])
        self.body.addWidget(split, 1)

        self._cli_timer = QTimer(self)
        self._cli_timer.setSingleShot(True)
        self._cli_timer.setInterval(200)
        self._cli_timer.timeout.connect(self.update_cli)
        self._cli_timer.timeout.connect(self.check_conflict)
        self._cli_timer.timeout.connect(self.check_lr)
        self.restore_form()
        self.update_method_fields()
        self.update_buttons()

    # -- workspace -----------------------------------------------------------------------
    def refresh(self) -> None:
        if self.ws is None:
            return
        self.collections.set_collections(outputs.collection_overview(self.ws))
        local = [t.name for t in self.ws.list_teachers() if t.kind == "local"]
        self._fill_combo(self.teacher_box, ["", *local])
        current = self.resume_box.currentData()
        stopped = stopped_runs(self.ws)
        items = [(f"{r.name} — {r.status} at step {r.step:,}", r.name) for r in stopped]
        if [
            (self.resume_box.itemText(i), self.resume_box.itemData(i))
            for i in range(self.resume_box.count())
        ] != items:
            self.resume_box.blockSignals(True)
            self.resume_box.clear()
            for text, name in items:
                self.resume_box.addItem(text, name)
            if current in [n for _, n in items]:
                self.resume_box.setCurrentIndex([n for _, n in items].index(current))
            self.resume_box.blockSignals(False)
        self.update_buttons()
        self.update_cli()

    @staticmethod
    def _fill_combo(box: QComboBox, items: list[str]) -> None:
        if [box.itemText(i) for i in range(box.count())] == items:
            return  # unchanged: leave what the person is typing alone
        current = box.currentText()
        box.blockSignals(True)
        box.clear()
        box.addItems(items)
        if current:
            box.setCurrentText(current)
        box.blockSignals(False)

    # -- the config ----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        data = {key: form.values() for key, form in self.forms.items() if key != "lora"}
        data["data"] = {**self.collections.config_values(), **data["data"]}
        if self.use_lora.isChecked():
            data["lora"] = self.forms["lora"].values()
        data["run"] = {k: v for k, v in data["run"].items() if v is not None}
        shown = self.distill_fields()
        data["distill"] = {k: v for k, v in data["distill"].items() if v is not None and k in shown}
        return data

    def build_config(self) -> TrainConfig:
        """The TrainConfig the form describes; ConfigError (a UserError) names a bad key."""
        return TrainConfig.from_dict(self.config_dict())

    def set_config(self, config: TrainConfig | dict[str, Any]) -> None:
        data = config.to_dict() if isinstance(config, TrainConfig) else config
        for key, form in self.forms.items():
            if data.get(key):
                form.set_values(data[key])
        if data.get("data"):
            self.collections.set_config_values(data["data"])
        self.use_lora.setChecked(bool(data.get("lora")))
        self.update_cli()

    @Slot()
    def on_form_changed(self) -> None:
        self._cli_timer.start()

    def distill_fields(self) -> frozenset[str]:
        """The [distill] keys that apply to the method (and divergence) the form shows."""
        form = self.forms["distill"]
        return DistillConfig.fields_for(form.value("method"), form.value("divergence"))

    @Slot()
    def update_method_fields(self) -> None:
        """Show only the fields that apply; hidden ones keep their defaults in the config."""
        form = self.forms["distill"]
        shown = self.distill_fields()
        for name, widget in form.widgets.items():
            if name != "method":
                form.layout_.setRowVisible(widget, name in shown)
        self.jsd_hint.setVisible("beta" in shown)

    def toml_text(self, config: TrainConfig) -> str:
        return dumps_toml(config.to_dict())

    def command_for(self, toml_path: Path | str) -> str:
        ws = f"--workspace {shlex.quote(str(self.ws.root))} " if self.ws else ""
        return f"kdstudio {ws}train --config {shlex.quote(str(toml_path))}"

    def config_path(self, config: TrainConfig) -> Path:
        name = config.run.name or config.data.names()[0]
        return (self.ws.root / "configs" if self.ws else Path("configs")) / f"{name}.toml"

    def restore_form(self) -> None:
        """The form as it was when the window last closed (or last changed)."""
        saved = gui_settings.settings().value(FORM_SETTING)
        if not saved:
            return
        try:
            data = json.loads(saved)
        except (TypeError, ValueError):
            return  # an unreadable setting: the defaults it is
        self.set_config(data)

    @Slot()
    def update_cli(self) -> None:
        gui_settings.settings().setValue(FORM_SETTING, json.dumps(self.config_dict()))
        if self.run_name is None:  # nothing run or shown yet: the steps the form sets
            steps = self.forms["optim"].value("max_steps")  # (also while the form is incomplete)
            self.show_steps(
                0, steps if isinstance(steps, int) and steps > 0 else None, running=False
            )
        try:
            config = self.build_config()
        except UserError as exc:
            self.command_view.setText("")
            self.toml_view.setPlainText(f"# the form has a problem: {exc}")
            return
        self.toml_view.setPlainText(self.toml_text(config))
        self.command_view.setText(self.command_for(self.config_path(config)))

    def write_config(self, config: TrainConfig) -> Path:
        """Write the TOML the command names (workspace/configs/<run>.toml) and show the
        command; what is copied or started always exists on disk."""
        path = self.config_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.toml_text(config), encoding="utf-8")
        self.command_view.setText(self.command_for(path))
        return path

    @Slot()
    def copy_command(self) -> None:
        config = self._checked_config()
        if config is None:
            return
        path = self.write_config(config)
        QGuiApplication.clipboard().setText(self.command_view.text())
        self.message.show_message(f"Copied the command; its config is saved as {path}.", "info")

    @Slot()
    def copy_toml(self) -> None:
        QGuiApplication.clipboard().setText(self.toml_view.toPlainText())

    @Slot()
    def save_toml_dialog(self) -> None:
        try:
            config = self.build_config()
        except UserError as exc:
            self.message.show_message(str(exc), "error")
            return
        path = file_dialogs.save_file(
            self, "Save the training config", str(self.config_path(config)), "TOML (*.toml)"
        )
        if path:
            Path(path).write_text(self.toml_text(config), encoding="utf-8")
            self.command_view.setText(self.command_for(path))

    def _checked_config(self) -> TrainConfig | None:
        try:
            config = self.build_config()
        except UserError as exc:
            self.message.show_message(str(exc), "error")
            return None
        if self.ws is None:
            return None
        return config

    @Slot()
    def check_lr(self) -> None:
        """The pre-flight's learning-rate warning, under the form while it is edited."""
        try:
            problem = plan.lr_problem(self.build_config())
        except UserError:
            problem = None
        self.lr_note.set_note(
            f"{problem[:1].upper()}{problem[1:]}." if problem else None, "warning"
        )

    # -- what the student sees -----------------------------------------------------------
    @Slot()
    def preview(self) -> None:
        config = self._checked_config()
        if config is None:
            return
        ws, index = self.ws, self.example_index.value()

        def show(sink, cancel):
            from kdstudio.distill.batches import load_student_tokenizer

            tok, fallback = load_student_tokenizer(config.student.path, config.student.template)
            from kdstudio.distill.plan import iter_run_examples, preview_run_example

            seen = 0
            for ex in iter_run_examples(config, ws):
                if seen == index:
                    return preview_run_example(config, ws, tok, ex, fallback=fallback)
                seen += 1
            raise UserError(
                f"{config.data.label()} has {seen} examples; choose a lower example number"
            )

        self.preview_info.setText("Rendering…")
        job = self.start_job("preview example", show)
        job.succeeded.connect(self.on_preview_ready)
        job.errored.connect(self.on_preview_failed)
        job.start()

    @Slot(object)
    def on_preview_ready(self, preview: Any) -> None:
        from kdstudio.gui.widgets import is_dark

        notes = [
            f"{preview.n_loss} of {preview.n_tokens} tokens carry loss (highlighted)",
            f"template: {preview.template}",
        ]
        if preview.sequence == "teacher":
            notes.append("the teacher's own tokens (sparse_kd trains on them as written)")
        if preview.truncated:
            notes.append("cut to data.max_length")
        if preview.dropped:
            notes.append(
                "DROPPED: truncation would remove the whole response (raise data.max_length)"
            )
        self.preview_info.setText(" · ".join(notes))
        self.preview_view.setHtml(student_sees_html(preview, is_dark(self)))
        first = next((i for i, t in enumerate(preview.tokens) if t["loss"]), None)
        if first is not None:
            pos = sum(len(t["text"]) + t["text"].count("\n") for t in preview.tokens[:first])
            cursor = self.preview_view.textCursor()
            cursor.setPosition(min(pos, len(self.preview_view.toPlainText())))
            self.preview_view.setTextCursor(cursor)
            self.preview_view.ensureCursorVisible()
        self.tabs.setCurrentIndex(0)

    @Slot(object)
    def on_preview_failed(self, info) -> None:
        self.preview_info.setText(f"Could not render: {info.summary}")

    # -- pre-flight ----------------------------------------------------------------------
    @Slot()
    def preflight(self) -> None:
        """The core pre-flight (kdstudio.distill.preflight) in a worker: loading tokenizers
        and reading the collection take seconds. No run is created."""
        config = self._checked_config()
        if config is None:
            return
        ws = self.ws

        def check(sink, cancel):
            from kdstudio.distill.preflight import preflight

            return preflight(config, ws)

        self.log.clear()
        self.message.clear()
        self.log.appendPlainText(
            "Pre-flight: checking the student, the data, the method and the memory…"
        )
        self.tabs.setCurrentIndex(1)
        job = self.start_job("pre-flight", check)
        job.succeeded.connect(self.on_preflight_report)
        job.ended.connect(self.update_buttons)
        job.start()
        self.update_buttons()

    @Slot(object)
    def on_preflight_report(self, report: Any) -> None:
        self.log.appendPlainText(report.describe())
        self.last_preflight = report
        if not report.ok:
            more = len(report.errors) - 1
            tail = f" (and {more} more: see Pre-flight and log)" if more else ""
            self.message.show_message(f"Pre-flight: {report.errors[0]}{tail}", "error")
            return
        facts = [f"{report.train_examples:,} train / {report.eval_examples:,} eval examples"]
        if report.total_steps:
            facts.append(f"{report.total_steps:,} steps")
        if report.kd:
            facts.append(
                f"{report.kd['kd_share']:.0%} of response tokens use KD "
                f"(align {report.kd.get('align', 'auto')})"
            )
        if report.memory:
            from kdstudio.distill.plan import fmt_bytes

            facts.append(f"~{fmt_bytes(report.memory['total'])} estimated memory")
        summary = "Pre-flight passed (" + ", ".join(facts) + ")"
        if report.notes:
            self.message.show_message(
                f"{summary} with {plural(len(report.notes), 'warning')}: {report.notes[0]}",
                "warning",
            )
        else:
            self.message.show_message(f"{summary}: the run can start.", "success")

    # -- start / stop / resume -----------------------------------------------------------
    @Slot()
    def start(self) -> Job | None:
        if self.resume_target is not None and not self.running_training():
            return self.resume_run(self.resume_target)
        if self.running_training():
            return None
        problem = self.student_path.check()  # said first, before any worker starts
        if problem is not None:  # (pre-flight lists it among every other problem)
            self.message.show_message(f"Student model folder: {problem}.", "error")
            return None
        config = self._checked_config()
        if config is None or self.check_conflict():
            return None
        config = config.resolved()
        self.write_config(config)
        ws = self.ws

        def train(sink, cancel):
            from kdstudio.distill.trainer import Trainer, run_training

            return run_training(Trainer(config, ws, sink, cancel))

        return self._launch(
            config.run.name,
            train,
            history=False,
            method=config.distill.method,
            total=config.optim.max_steps or None,
        )

    def resume_run(self, name: str) -> Job | None:
        """Continue run `name` from its last checkpoint, with its stored settings."""
        if self.running_training() or self.ws is None:
            return None
        ws = self.ws
        run = runs.get_run(ws, name)
        self.set_config(run.config)

        def train(sink, cancel):
            from kdstudio.distill.trainer import Trainer, run_training

            return run_training(Trainer.for_resume(ws, name, sink, cancel))

        self.leave_resume_mode()
        return self._launch(
            name, train, history=True, method=run.method, total=_total_steps(run), step=run.step
        )

    @Slot()
    def resume_selected(self) -> None:
        name = self.resume_box.currentData()
        if name:
            self.offer_resume(name)

    def offer_resume(self, name: str) -> None:
        """Show run `name` (its settings in the form, its curves) ready to continue: the
        Start button becomes "Resume NAME"; form changes it would not use are listed."""
        if self.running_training() or self.ws is None:
            return
        self.show_run(name)
        self.resume_target = name
        self.start_button.setText(f"Resume {name}")
        self.start_button.setToolTip("Continue this run from its last checkpoint (Ctrl+Enter)")
        run = runs.get_run(self.ws, name)
        self.show_message(
            f"Run {name!r} {run.status} at step {run.step:,}. Its settings are in the form: "
            f"press “Resume {name}” to continue it from its last checkpoint.",
            "info",
        )
        self.check_conflict()

    def leave_resume_mode(self) -> None:
        self.resume_target = None
        self.start_button.setText("Start training")
        self.start_button.setToolTip("Start a run with this config (Ctrl+Enter)")

    @Slot()
    def check_conflict(self) -> str | None:
        """Say, before Start, what would go wrong: form changes a resumed run does not use,
        or a new run's name that another run has."""
        if self.ws is None or self.running_training():
            return None
        try:
            config = self.build_config()
        except UserError:
            return None  # the form's own problem is shown when it is used
        name = config.run.name
        if self.resume_target is not None:
            if name and name != self.resume_target:
                self.leave_resume_mode()  # another name: a new run
            else:
                stored = runs.get_run(self.ws, self.resume_target).train_config()
                changed = run_conflicts(stored.to_dict(), config.to_dict())
                if changed:
                    self.show_message(
                        f"These settings differ from those run {self.resume_target!r} was "
                        f"started with and would not be used when resuming it: "
                        f"{'; '.join(changed[:4])}"
                        f"{' …' if len(changed) > 4 else ''}. To train with them, give the "
                        "run another name (Run, Name) and start a new run.",
                        "warning",
                    )
                return None
        before, self.conflict = self.conflict, None
        if name and name in runs.run_names(self.ws):
            run = runs.get_run(self.ws, name)
            self.conflict = name
            resumable = run.status in ("stopped", "interrupted")
            self.show_message(
                f"A run named {name!r} already exists ({run.status}): choose another run name "
                "(Run, Name)" + (", or resume it." if resumable else "."),
                "warning",
                action="Resume it" if resumable else None,
                on_action=(lambda: self.offer_resume(name)) if resumable else None,
            )
        elif before and self.message.text.startswith(f"A run named {before!r}"):
            self.message.clear()
        self.update_buttons()
        return self.conflict

    def choose_run_name(self) -> None:
        """Put the cursor in the run's name field (the fix for a name that is taken)."""
        widget = self.forms["run"].widgets.get("name")
        if widget is not None:
            widget.setFocus()
            if hasattr(widget, "selectAll"):
                widget.selectAll()

    def _launch(
        self,
        name: str,
        fn,
        *,
        history: bool,
        method: str,
        total: int | None,
        step: int = 0,
    ) -> Job:
        if self._cli_timer.isActive():  # a form check still due: do it now, not over the
            self._cli_timer.stop()  # message of a run that ends within its 200 ms
            self.update_cli()
            self.check_lr()
        self.run_name = name
        self.board.clear()
        self.board.set_run_method("", method)
        self.log.clear()
        if history and self.ws is not None:
            self.load_history(name)
            self.load_log(name)  # what the run said before, in this window or another
            self.log.appendPlainText(f"— resuming {name} from step {step:,} —")
        self.message.clear()
        self.show_steps(step, total)
        self.progress_label.setText(f"Run {name}: setting up (loading the data and the student)…")
        self._t0, self._step0 = time.monotonic(), None
        # A few progress updates a second read as live, and each costs a repaint of the
        # window that, on a small machine, is taken from the training loop.
        job = self.start_job(f"training {name}", fn, progress_hz=TRAIN_PROGRESS_HZ)
        self.job = job
        self._connect_events(job, plots=True)
        job.succeeded.connect(self.on_training_returned)
        job.cancelled.connect(self.on_training_cancelled)
        job.ended.connect(self.on_training_ended)
        job.start()
        self.update_buttons()
        self.status_changed.emit(f"training {name}")
        return job

    def show_steps(self, step: int, total: int | None, *, running: bool = True) -> None:
        """The step bar: `step` of the configured steps (never Qt's default "of 100").
        Unknown totals (a run by epochs counts its steps once the data is loaded) show
        busy while running and say so when idle."""
        self.progress.setFormat("%v / %m steps")
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(step, total))
        elif running:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("steps: counted from the epochs at the start")

    def show_run(self, name: str) -> None:
        """Show a stored run: its config in the form, its whole curves, where it ended."""
        if self.running_training() or self.ws is None:
            return
        run = runs.get_run(self.ws, name)
        self.set_config(run.config)
        self.run_name = name
        self.board.clear()
        self.board.set_run_method("", run.method)
        self.load_history(name)
        self.log.clear()
        self.load_log(name)
        total = _total_steps(run) or run.step
        self.show_steps(run.step, total)
        self.progress_label.setText(f"Run {name}: {run.status} at step {run.step:,} of {total:,}.")
        self.note_missing_gpu()

    def load_history(self, name: str) -> None:
        self.board.load_stored(self.ws, runs.get_run(self.ws, name).id)

    def load_log(self, name: str) -> None:
        """The run's log as the workspace keeps it (every line after the run was created)."""
        for event in self.ws.events("train", str(runs.get_run(self.ws, name).id), limit=5000):
            line = log_line(event["type"], event)
            if line is not None:
                self.log.appendPlainText(line)

    def _connect_events(self, job: Job, *, plots: bool) -> None:
        if plots:
            job.sink.metrics_reported.connect(self.on_metrics)
            job.sink.progressed.connect(self.on_progress)
        job.sink.logged.connect(self.on_log)
        job.sink.warned.connect(self.on_warning)
        job.sink.job_finished.connect(self.on_log)
        job.sink.job_failed.connect(self.on_log)

    def running_training(self) -> bool:
        return self.job is not None and self.job.running

    @Slot()
    def stop(self) -> None:
        if self.running_training():
            self.job.stop("stopped from the window")
            self.progress_label.setText(
                self.progress_label.text() + " — stopping after this step (saving a checkpoint)…"
            )
            self.stop_button.setEnabled(False)

    def update_buttons(self) -> None:
        training = self.running_training()
        busy = bool(self.running_jobs())
        blocked = self.conflict is not None and self.resume_target is None
        self.start_button.setEnabled(self.ws is not None and not busy and not blocked)
        self.preflight_button.setEnabled(self.ws is not None and not busy)
        self.stop_button.setEnabled(training)
        self.resume_button.setEnabled(not busy and self.resume_box.count() > 0)

    # -- events from the trainer (GUI thread) ----------------------------------------------
    @Slot(object)
    def on_metrics(self, event: Metrics) -> None:
        self.board.add_metrics(event.step, event.values)

    @Slot(object)
    def on_progress(self, event: Progress) -> None:
        if event.total:
            self.progress.setMaximum(event.total)
        self.progress.setValue(event.done)
        now = time.monotonic()
        if self._step0 is None:
            self._step0, self._t0 = event.done, now
        rate = (event.done - self._step0) / max(now - self._t0, 1e-9)
        eta = (event.total - event.done) / rate if rate > 0 and event.total else None
        loss = event.extra.get("loss")
        total = f"{event.total:,}" if event.total else "?"
        parts = [f"Run {self.run_name}: step {event.done:,} of {total}"]
        if rate > 0:
            parts.append(f"{rate:.2f} steps/s")
            parts.append(f"ETA {duration(eta)}")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        self.progress_label.setText(" · ".join(parts))

    @Slot(object)
    def on_log(self, event: Log | Finished | Failed) -> None:
        self.log.appendPlainText(log_line(event.type, event.to_dict()))

    @Slot(object)
    def on_warning(self, event: WarningEvent) -> None:
        self.log.appendPlainText(log_line(event.type, event.to_dict()))
        where = f" ({event.where})" if event.where else ""
        self.show_message(window_words(f"{event.message}{where}"), "warning")

    @Slot(object)
    def on_training_returned(self, result: Any) -> None:
        status = getattr(result, "status", "finished")
        if status == "diverged":
            self.show_diverged(result.run, result.message)
        elif status == "stopped":
            self.message.show_message(
                f"Run {result.run} stopped at step {result.step} with a checkpoint; resume it any time.",
                "info",
            )
        else:
            loss = (
                f"; final loss {result.loss:.4f}"
                if getattr(result, "loss", None) is not None
                else ""
            )
            ev = (
                f", eval loss {result.eval_loss:.4f}"
                if getattr(result, "eval_loss", None) is not None
                else ""
            )
            self.message.show_message(
                f"Run {result.run} finished: {result.step} steps{loss}{ev}.", "success"
            )
        # the step it ended at (its last progress event may have been throttled away)
        self.show_steps(result.step, result.total_steps, running=False)
        self.progress_label.setText(
            f"Run {result.run}: {status} at step {result.step:,} of {result.total_steps:,}."
        )

    def show_diverged(self, name: str, message: str) -> None:
        """A diverged run: what happened and what to change, with the button that makes
        those changes in the form for a new run."""
        text = window_words(message)
        self.show_message(
            text[:1].upper() + text[1:],
            "error",
            action="New run with these changes",
            on_action=lambda: self.offer_fixed_run(name),
        )

    def offer_fixed_run(self, name: str) -> None:
        """Put diverged run `name`'s settings in the form with the remedies its message
        names (kdstudio.distill.divergence.remedies) and a new name: Start tries again."""
        from kdstudio.distill.divergence import remedied, remedies

        if self.running_training() or self.ws is None:
            return
        stored = runs.get_run(self.ws, name).train_config()
        self.leave_resume_mode()
        self.set_config(remedied(stored))
        changes = "; ".join(r.text for r in remedies(stored))
        self.show_message(
            f"The settings of run {name!r} are in the form, with these changes: {changes}. "
            "Press Start training for a new run.",
            "info",
        )

    @Slot(str)
    def on_training_cancelled(self, reason: str) -> None:
        self.message.show_message(f"Training stopped ({reason}).", "info")

    def note_missing_gpu(self) -> None:
        plot = self.board.plot_for("gpu_mem_gb")
        if plot is not None and self.board.point_count("gpu_mem_gb") == 0:
            plot.set_empty_text("no GPU: a CPU run")

    @Slot()
    def on_training_ended(self) -> None:
        job = self.job
        if job is not None and job.outcome == "errored":  # never "setting up…" forever
            started = self._step0 is not None
            what = "failed" if started else "did not start"
            summary = job.error.summary if job.error else "an error"
            self.progress_label.setText(f"Run {self.run_name} {what}: {summary}")
            if not started:
                self.show_steps(0, self.progress.maximum() or None, running=False)
        elif job is not None and job.outcome == "cancelled" and self._step0 is None:
            self.progress_label.setText(f"Run {self.run_name}: stopped before its first step.")
        self.board.flush()
        self.note_missing_gpu()
        self.refresh()
        self.workspace_changed.emit()
        self.status_changed.emit(f"run {self.run_name} ended")
