"""Datasets: import (file dialog or drop, with a mapping step), a lazy table, stats, search."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import (
    QFormLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from kdstudio.data import store
from kdstudio.data.importer import plural, reasons
from kdstudio.gui import file_dialogs
from kdstudio.gui import settings as gui_settings
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.plots import HistogramPlot
from kdstudio.gui.table_models import Column, LazyTableModel
from kdstudio.gui.widgets import (
    Card,
    Selection,
    escape,
    fmt_count,
    fmt_time,
    heading,
    hint,
    row_table,
)

HIST_COLOUR = "#4c8bf5"
FILE_FILTER = "Datasets (*.jsonl *.ndjson *.json *.csv *.tsv *.parquet *.pq);;All files (*)"

ROW_COLUMNS = [
    Column("#", lambda r: r.idx, align_right=True),
    Column("System", lambda r: r.system or "", tooltip=True, max_chars=60),
    Column("Prompt", lambda r: r.prompt, tooltip=True, max_chars=200),
    Column("Turns", lambda r: len(r.messages), align_right=True),
    Column("Reference", lambda r: r.reference or "", tooltip=True, max_chars=160),
    Column("Chars", lambda r: r.n_chars, align_right=True),
]


class DatasetsPanel(Panel):
    title = "Datasets"
    key = "datasets"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.dataset: str | None = None

        # left: the datasets and the import button
        self.list = QListWidget()
        self.list.currentItemChanged.connect(self.on_dataset_chosen)
        self.import_button = QPushButton("Import file…")
        self.import_button.setToolTip("Import a JSONL, JSON, CSV or Parquet file (Ctrl+I)")
        self.import_button.clicked.connect(self.choose_file)
        self.import_folder_button = QPushButton("Import Hugging Face folder…")
        self.import_folder_button.setToolTip(
            "Import a folder written by Hugging Face datasets' save_to_disk (a Dataset, or a "
            "DatasetDict: pick the split in the next step)"
        )
        self.import_folder_button.clicked.connect(self.choose_folder)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(heading("Datasets"))
        ll.addWidget(self.list, 1)
        ll.addWidget(self.import_button)
        ll.addWidget(self.import_folder_button)
        ll.addWidget(hint("…or drop a file or a saved datasets folder anywhere on the window."))

        # middle: search + the lazy table
        self.search = QLineEdit()
        self.search.setPlaceholderText(
            "Search prompts and references (every word must occur; word* for a prefix)"
        )
        self.search.setClearButtonEnabled(True)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.apply_search)
        self.search.textChanged.connect(self._debounce.start)
        self.model = LazyTableModel(ROW_COLUMNS, page_size=200)
        self.table = row_table(self.model, Selection.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        for i, w in enumerate((70, 140, 420, 50, 300, 70)):
            self.table.setColumnWidth(i, w)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().currentRowChanged.connect(self.on_row_chosen)
        self.count_label = QLabel()
        self.row_view = QTextBrowser()
        self.row_view.setMaximumHeight(180)
        self.row_view.setPlaceholderText("Select a row to see all its turns.")
        middle = QWidget()
        ml = QVBoxLayout(middle)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addWidget(self.search)
        ml.addWidget(self.table, 1)
        ml.addWidget(self.count_label)
        ml.addWidget(self.row_view)

        # right: stats
        self.stats_card = Card("Stats")
        self.stats_form = QFormLayout()
        self.stats_card.body.addLayout(self.stats_form)
        self.hist = HistogramPlot("Rows by length", "characters")
        self.hist.setMinimumHeight(170)
        self.hist.setMaximumHeight(220)
        self.hist.set_empty_text("no rows")
        self.stats_card.body.addWidget(self.hist)
        self.stats_card.body.addStretch(1)
        self.stats_card.setMinimumWidth(250)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(middle)
        split.addWidget(self.stats_card)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 5)
        split.setStretchFactor(2, 1)
        split.setSizes([200, 900, 280])
        self.body.addWidget(split, 1)
        self.importer = None
        self.message.action_triggered.connect(self.choose_file)  # "Import file…" on the empty hint

    # -- the list ------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.ws is None:
            return
        infos = store.list_datasets(self.ws)
        current = self.dataset
        self.list.blockSignals(True)
        self.list.clear()
        for info in infos:
            item = QListWidgetItem(
                f"{info.name}\n{fmt_count(info.n_rows)} rows · {info.format or ''}"
            )
            item.setData(Qt.ItemDataRole.UserRole, info.name)
            item.setToolTip(f"{info.source or ''}\nimported {fmt_time(info.created_at)}")
            self.list.addItem(item)
        self.list.blockSignals(False)
        names = [i.name for i in infos]
        if not names:
            self.dataset = None
            self.model.clear()
            self.show_stats(None)
            self.count_label.setText("")
            self.message.show_message(
                "No datasets yet: import a JSONL, JSON, CSV or Parquet file of prompts.",
                "info",
                action="Import file…",
            )
            return
        if self.message.text.startswith("No datasets"):
            self.message.clear()
        self.select_dataset(current if current in names else names[0])

    def select_dataset(self, name: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentRow(i)
                if self.dataset != name or self.model.total is None or not self.model.rows:
                    self.dataset = name
                    self.show_dataset()
                return

    @Slot(QListWidgetItem, QListWidgetItem)
    def on_dataset_chosen(self, item: QListWidgetItem | None, _previous=None) -> None:
        if item is None:
            return
        self.dataset = item.data(Qt.ItemDataRole.UserRole)
        self.show_dataset()

    def show_dataset(self) -> None:
        if self.ws is None or not self.dataset:
            return
        self.show_stats(store.get_dataset(self.ws, self.dataset))
        self.apply_search()

    # -- the table and search ------------------------------------------------------------
    @Slot()
    def apply_search(self) -> None:
        if self.ws is None or not self.dataset:
            return
        ws, name = self.ws, self.dataset
        text = self.search.text().strip() or None

        def fetch(offset: int, limit: int):
            return store.page(ws, name, offset, limit, search=text)

        def count() -> int:
            return store.count(ws, name, search=text)

        self.model.set_query(fetch, count)
        total = store.get_dataset(ws, name).n_rows
        if text:
            self.count_label.setText(
                f"{fmt_count(self.model.total)} of {fmt_count(total)} rows match “{text}”"
            )
        else:
            self.count_label.setText(f"{fmt_count(total)} rows (loaded as you scroll)")
        self.row_view.clear()

    @Slot()
    def on_row_chosen(self) -> None:
        index = self.table.currentIndex()
        if not index.isValid():
            return
        row = self.model.row(index.row())
        parts = []
        for m in row.messages:
            parts.append(
                f"<p><b>{escape(m.get('role', ''))}</b><br>{escape(str(m.get('content', ''))).replace(chr(10), '<br>')}</p>"
            )
        if row.reference:
            parts.append(
                f"<p><b>reference answer</b><br>{escape(row.reference).replace(chr(10), '<br>')}</p>"
            )
        if row.meta:
            parts.append(f"<p><i>other fields: {escape(', '.join(row.meta))}</i></p>")
        self.row_view.setHtml("".join(parts))

    # -- stats ---------------------------------------------------------------------------
    def show_stats(self, info) -> None:
        while self.stats_form.rowCount():
            self.stats_form.removeRow(0)
        if info is None:
            self.hist.set_buckets([], 0, 0, HIST_COLOUR)
            return
        s = info.stats or {}
        chars = s.get("chars", {})
        about = "" if chars.get("exact") else "~"  # stats stored before 0.2: bucket bounds

        def q(name: str) -> str:
            return f"{about}{chars.get(name, 0):,}"

        rows = [
            ("Rows", fmt_count(info.n_rows)),
            ("Format", info.format or "?"),
            ("Source", Path(info.source).name if info.source else "?"),  # full path: tooltip
            ("With system prompt", fmt_count(s.get("with_system"))),
            ("With reference", fmt_count(s.get("with_reference"))),
            ("Multi-turn", fmt_count(s.get("multi_turn"))),
            ("Chars min / max", f"{chars.get('min', 0):,} / {chars.get('max', 0):,}"),
            ("Chars mean / p50", f"{chars.get('mean', 0):,} / {q('p50')}"),
            ("p90 / p99", f"{q('p90')} / {q('p99')}"),
            ("≈ tokens", fmt_count(s.get("approx_tokens"))),
            ("Duplicates", fmt_count(s.get("duplicates"))),
            ("Skipped rows", fmt_count(s.get("skipped"))),
        ]
        if info.parent:
            rows.insert(1, ("Derived from", info.parent))
        for label, value in rows:
            v = QLabel(str(value))
            v.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            v.setWordWrap(True)
            self.stats_form.addRow(label, v)
        buckets = [
            (store.length_bucket(lo), lo, k) for lo, _hi, k in s.get("length_histogram") or []
        ]
        self.hist.set_buckets(buckets, chars.get("min", 0), chars.get("max", 0), HIST_COLOUR)

    # -- import --------------------------------------------------------------------------
    @Slot()
    def choose_file(self) -> None:
        recent = gui_settings.recent("files")
        start = str(Path(recent[0]).parent) if recent else str(Path.home())
        path = file_dialogs.open_file(self, "Import a dataset", start, FILE_FILTER)
        if path:
            self.import_files([path])

    @Slot()
    def choose_folder(self) -> None:
        recent = gui_settings.recent("files")
        start = str(Path(recent[0]).parent) if recent else str(Path.home())
        folder = file_dialogs.existing_folder(self, "Import a Hugging Face dataset", start)
        if folder:
            self.import_files([folder])

    def import_files(self, paths: list[str]) -> None:
        """Start the mapping step for the first file or saved `datasets` folder (drops may
        carry several)."""
        from kdstudio.data.readers import is_hf_folder
        from kdstudio.gui.panels.dataset_import import ImportDialog

        if self.ws is None:
            return
        files = [Path(p) for p in paths if Path(p).is_file() or is_hf_folder(Path(p))]
        if not files:
            self.message.show_message(
                "Only files, or folders written by Hugging Face datasets' save_to_disk, can be "
                "imported (that folder has no state.json or dataset_dict.json).",
                "error",
            )
            return
        gui_settings.add_recent("files", files[0])
        dialog = ImportDialog(self.ws, files[0], self)
        dialog.imported.connect(self.on_imported)
        dialog.open()
        self.importer = dialog
        if len(files) > 1:
            self.message.show_message(
                f"Importing {files[0].name}; drop the other {plural(len(files) - 1, 'file')} one at a time.",
                "info",
            )

    @Slot(object)
    def on_imported(self, result) -> None:
        """Show the new dataset, and say what was left out and why (line by line)."""
        self.dataset = result.name
        self.refresh()
        self.select_dataset(result.name)
        text = f"Imported {plural(result.n_rows, 'row')} as {result.name!r}."
        level = "success"
        if result.skipped:
            why = "; ".join(
                f"{reason} ({n}×)" if n > 1 else reason
                for reason, n in reasons(result.skipped).most_common(3)
            )
            text += f" {result.describe_skipped().capitalize()} ({why})."
            level = "warning"
        self.message.show_message(text, level)
        self.workspace_changed.emit()
