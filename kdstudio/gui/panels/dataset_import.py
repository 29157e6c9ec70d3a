"""The import step: choose format and column mapping with a live preview, then import.

The preview runs the core's own reader, schema detection and row converter on the first
rows of the file, so what it shows is what the import will store.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QVBoxLayout,
)

from kdstudio.data import FORMATS, import_dataset
from kdstudio.data.importer import SCHEMA_WORDS, _split_format, default_name, file_words
from kdstudio.data.readers import hf_splits, open_reader
from kdstudio.data.schema import RowError, converter, detect, normalize_mapping
from kdstudio.errors import UserError
from kdstudio.events import Progress
from kdstudio.gui.table_models import Column, ListTableModel
from kdstudio.gui.widgets import MessageBar, Selection, hint, row_table
from kdstudio.gui.workers import ErrorInfo, Job
from kdstudio.workspace import Workspace

PREVIEW_ROWS = 20
MAPPED_FIELDS = (
    "prompt",
    "response",
    "system",
    "id",
    "messages",
    "conversations",
    "instruction",
    "input",
)
AUTO = "(auto)"


@dataclass
class PreviewRow:
    line: int
    system: str | None = None
    prompt: str = ""
    turns: int = 0
    reference: str | None = None
    error: str | None = None


@dataclass
class FilePreview:
    """The first rows of a file as the import would store them; `problem` says why they
    cannot be (no prompt column found: choose one), with every column still listed."""

    kind: str
    schema: str
    columns: dict[str, str]
    available: list[str]
    rows: list[PreviewRow] = field(default_factory=list)
    problem: str = ""

    def describe(self) -> str:
        cols = ", ".join(f"{f} ← {c!r}" for f, c in self.columns.items())
        return f"{file_words(self.kind)}, {SCHEMA_WORDS.get(self.schema, self.schema)}; {cols}"


def preview_file(
    path: Path,
    fmt: str = "auto",
    mapping: dict[str, str] | None = None,
    n: int = PREVIEW_ROWS,
    split: str | None = None,
) -> FilePreview:
    """Read the first rows of `path` (a file, or a saved `datasets` folder and its `split`)
    with the core's reader/detect/converter (UserError if bad)."""
    container, forced = _split_format(fmt)
    reader = open_reader(path, container, split=split)
    head = list(itertools.islice(iter(reader), 200))
    records = [rec for _, rec in head if type(rec) is dict]
    if not records:
        if head:
            line, bad = head[0]
            raise UserError(f"{reader.label}, {reader.unit} {line}: {bad.reason}")
        raise UserError(f"{reader.label} has no rows")
    available = list(dict.fromkeys(k for rec in records for k in rec))
    try:
        schema = detect(records, normalize_mapping(mapping), forced)
    except UserError as exc:  # the columns are known: the user can choose among them
        return FilePreview(reader.kind, "", {}, available, problem=in_dialog_words(str(exc)))
    convert = converter(schema)
    rows = []
    for line, rec in head[:n]:
        if type(rec) is not dict:
            rows.append(PreviewRow(line, error=rec.reason))
            continue
        try:
            msgs, prompt, system, reference, _key, _meta = convert(rec)
        except RowError as exc:
            rows.append(PreviewRow(line, error=str(exc)))
            continue
        rows.append(PreviewRow(line, system, prompt, len(msgs), reference))
    return FilePreview(reader.kind, schema.name, dict(schema.columns), available, rows)


def in_dialog_words(message: str) -> str:
    """The core's message with the dialog's controls for its command-line options."""
    message = re.sub(
        r"(?:say which column holds the \w+ )?(?:with|use) --map (\w+)=COLUMN(?:, e\.g\. --map \S+)?",
        r"choose the \1 column under Column mapping",
        message,
    )
    return re.sub(r"--format ([\w-]+)", r"Format \1", message)


PREVIEW_COLUMNS = [
    Column("Line", lambda r: r.line, align_right=True),
    Column("System", lambda r: r.system or "", tooltip=True, max_chars=50),
    Column(
        "Prompt",
        lambda r: r.prompt if r.error is None else f"cannot import: {r.error}",
        tooltip=True,
        max_chars=140,
        colour=lambda r: "#d23c3c" if r.error else None,
    ),
    Column("Turns", lambda r: r.turns or "", align_right=True),
    Column("Reference answer", lambda r: r.reference or "", tooltip=True, max_chars=100),
]


class ImportDialog(QDialog):
    """Mapping step + import job for one file; emits `imported(ImportResult)` when done."""

    imported = Signal(object)

    def __init__(self, ws: Workspace, path: Path, parent=None) -> None:
        super().__init__(parent)
        self.ws, self.path = ws, Path(path)
        self.job: Job | None = None
        self.setWindowTitle(f"Import {self.path.name}")
        self.resize(980, 640)
        self.message = MessageBar(self)
        self.name = QLineEdit(default_name(self.path))
        self.format = QComboBox()
        self.format.addItems(list(FORMATS))
        # a DatasetDict folder (save_to_disk): which split to import
        self.split = QComboBox()
        try:
            splits = hf_splits(self.path) if self.path.is_dir() else None
        except UserError:
            splits = None  # the preview reports what is wrong with the folder
        self.split.addItems(splits or [])
        if splits:
            self.name.setText(default_name(self.path, self.split.currentText()))
        self.skip_bad = QCheckBox(
            "Skip lines that cannot be read (they are listed when the import is done)"
        )
        self.dedupe = QCheckBox("Remove duplicate rows")
        self.as_collection = QLineEdit()
        self.as_collection.setPlaceholderText(
            "optional: store reference answers as a collection of this name"
        )
        self.detected = QLabel()
        self.detected.setWordWrap(True)
        self.map_boxes: dict[str, QComboBox] = {}
        grid = QGridLayout()
        for i, fld in enumerate(MAPPED_FIELDS):
            box = QComboBox()
            box.addItem(AUTO)
            box.currentIndexChanged.connect(self.schedule_preview)
            self.map_boxes[fld] = box
            grid.addWidget(QLabel(fld), i // 4, (i % 4) * 2)
            grid.addWidget(box, i // 4, (i % 4) * 2 + 1)
        form = QFormLayout()
        form.addRow("Folder" if self.path.is_dir() else "File", QLabel(str(self.path)))
        if splits:
            form.addRow("Split", self.split)
        form.addRow("Dataset name", self.name)
        form.addRow("Format", self.format)
        form.addRow("Answers as collection", self.as_collection)
        form.addRow("", self.skip_bad)
        form.addRow("", self.dedupe)
        self.model = ListTableModel(PREVIEW_COLUMNS)
        self.table = row_table(self.model, Selection.NoSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for i, w in enumerate((50, 120, 420, 50)):
            self.table.setColumnWidth(i, w)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.progress_label = QLabel()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.import_button = self.buttons.addButton(
            "Import", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.import_button.setDefault(True)
        self.buttons.accepted.connect(self.start_import)
        self.buttons.rejected.connect(self.cancel)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addLayout(form)
        layout.addWidget(QLabel("<b>Column mapping</b>"))
        layout.addWidget(
            hint("Leave (auto) to let kdstudio detect the shape; pick a column to override it.")
        )
        layout.addLayout(grid)
        layout.addWidget(self.detected)
        layout.addWidget(
            QLabel(f"<b>Preview</b> (the first {PREVIEW_ROWS} rows as they will be stored)")
        )
        layout.addWidget(self.table, 1)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.progress_label, 1)
        layout.addLayout(row)
        layout.addWidget(self.buttons)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.update_preview)
        self.format.currentIndexChanged.connect(self.schedule_preview)
        self.split.currentTextChanged.connect(self.on_split_changed)
        self.preview: FilePreview | None = None
        self.update_preview()

    def chosen_split(self) -> str | None:
        return self.split.currentText() or None

    @Slot(str)
    def on_split_changed(self, split: str) -> None:
        self.name.setText(default_name(self.path, split))
        self.schedule_preview()

    def mapping(self) -> dict[str, str]:
        return {f: b.currentText() for f, b in self.map_boxes.items() if b.currentText() != AUTO}

    @Slot()
    def schedule_preview(self) -> None:
        self._timer.start()

    @Slot()
    def update_preview(self) -> None:
        try:
            preview = preview_file(
                self.path, self.format.currentText(), self.mapping(), split=self.chosen_split()
            )
        except UserError as exc:
            self.preview = None
            self.model.set_rows([])
            self.detected.setText("")
            self.message.show_message(str(exc), "error")
            self.import_button.setEnabled(False)
            return
        except OSError as exc:
            self.message.show_message(f"Cannot read {self.path}: {exc.strerror or exc}", "error")
            self.import_button.setEnabled(False)
            return
        self.preview = preview
        self._fill_columns(preview.available)
        self.model.set_rows(preview.rows)
        if preview.problem:
            self.detected.setText(f"Columns: {', '.join(map(repr, preview.available))}")
            self.message.show_message(preview.problem, "error")
            self.import_button.setEnabled(False)
            return
        self.message.clear()
        bad = sum(1 for r in preview.rows if r.error)
        text = f"Detected: {preview.describe()}"
        if bad:
            text += f" — {bad} of the first {len(preview.rows)} rows cannot be imported (see the red rows)"
        self.detected.setText(text)
        self.import_button.setEnabled(True)

    def _fill_columns(self, columns: list[str]) -> None:
        for box in self.map_boxes.values():
            if box.count() == len(columns) + 1:
                continue
            current = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems([AUTO, *columns])
            box.setCurrentText(current if current in columns else AUTO)
            box.blockSignals(False)

    @Slot()
    def start_import(self) -> None:
        ws, path = self.ws, self.path
        kwargs: dict[str, Any] = dict(
            name=self.name.text().strip() or None,
            fmt=self.format.currentText(),
            split=self.chosen_split(),
            mapping=self.mapping() or None,
            skip_bad=self.skip_bad.isChecked(),
            dedupe=self.dedupe.isChecked(),
            as_collection=self.as_collection.text().strip() or None,
        )

        def run(sink, cancel):
            return import_dataset(ws, path, sink=sink, cancel=cancel, **kwargs)

        self.job = Job(f"import {path.name}", run)
        self.job.sink.progressed.connect(self.on_progress)
        self.job.succeeded.connect(self.on_imported)
        self.job.errored.connect(self.on_failed)
        self.job.cancelled.connect(self.on_cancelled)
        self.import_button.setEnabled(False)
        self.progress.show()
        self.progress_label.setText("Importing…")
        self.job.start()

    @Slot(object)
    def on_progress(self, event: Progress) -> None:
        self.progress_label.setText(f"{event.done:,} rows · {event.message}")

    @Slot(object)
    def on_imported(self, result: Any) -> None:
        self.progress.hide()
        self.imported.emit(result)
        self.accept()

    @Slot(object)
    def on_failed(self, info: ErrorInfo) -> None:
        self.progress.hide()
        self.progress_label.setText("")
        self.import_button.setEnabled(True)
        if info.expected:
            self.message.show_message(info.summary, "error")
        else:
            from kdstudio.gui.errors import report_unexpected

            self.message.show_message(f"The import failed: {info.summary}", "error")
            report_unexpected(info.summary, info.details, self)

    @Slot(str)
    def on_cancelled(self, reason: str) -> None:
        self.progress.hide()
        self.progress_label.setText("Import cancelled: nothing was stored.")
        self.import_button.setEnabled(True)

    @Slot()
    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.stop("import cancelled")
            return
        self.reject()
