"""Teachers: the list, an add/edit dialog (key in the OS keyring or an env var), probe."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from kdstudio import secrets
from kdstudio.config import TeacherConfig
from kdstudio.data.importer import plural
from kdstudio.errors import UserError
from kdstudio.formatting import url as shown_url
from kdstudio.gui import file_dialogs
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.table_models import Column, ListTableModel
from kdstudio.gui.widgets import MessageBar, heading, hint
from kdstudio.gui.workers import ErrorInfo, Job
from kdstudio.model_folder import model_folder_problem
from kdstudio.teachers.servers import PRESETS, Preset


def _key_text(t: TeacherConfig) -> str:
    return {"keyring": "OS keyring", "env": f"${t.key_env}", "none": "no key"}[t.key_source]


def _price_text(t: TeacherConfig) -> str:
    if not (t.price_in or t.price_out):
        return "free / unset"
    return f"${t.price_in:g} in · ${t.price_out:g} out"


def capabilities_text(caps: dict[str, Any] | None) -> str:
    """One line of what a probe found (the table's Capabilities column)."""
    if not caps:
        return "not probed yet"
    if caps.get("auth") == "rejected":
        return "key rejected"
    if not caps.get("reachable"):
        return "unreachable"
    if caps.get("model_exists") is False:
        return "model not found"
    if caps.get("logprobs"):
        parts = [f"logprobs (top {caps.get('top_logprobs', '?')})"]
    else:
        parts = ["text only (no logprobs)"]
    if caps.get("token_ids"):
        parts.append("token ids")
    p50 = (caps.get("latency_ms") or {}).get("p50")
    if isinstance(p50, (int, float)):
        parts.append(f"{p50:.0f} ms")
    return ", ".join(parts)


def _headers_lines(t: TeacherConfig) -> list[str]:
    """The extra headers, as `teacher list --json` shows them (credentials as ***)."""
    shown = t.public_dict()["headers"]
    items = [f"{k}: {v}" for k, v in shown.items()]
    items += [f"{name}: (in the OS keyring)" for name in t.secret_headers]
    return [f"headers:     {'; '.join(items)}"] if items else []


COLUMNS = [
    Column("Name", lambda t: t.name, width=140),
    Column("Kind", lambda t: "OpenAI-compatible" if t.kind == "openai" else "local model"),
    Column("Model", lambda t: t.model or "", width=160),
    Column(
        "Where",
        lambda t: shown_url(t.base_url) if t.kind == "openai" else t.path,
        width=240,
        tooltip=True,
    ),
    Column("Key", _key_text),
    Column("USD / M tokens", _price_text),
    Column("Capabilities", lambda t: capabilities_text(t.capabilities), tooltip=True),
]


class TeacherDialog(QDialog):
    """Add or edit a teacher. Validation problems show inline in the dialog."""

    def __init__(
        self,
        existing: TeacherConfig | None,
        keyring_ok: bool,
        parent=None,
        workspace_id: str | None = None,
    ) -> None:
        super().__init__(parent)
        self.existing = existing
        self.workspace_id = workspace_id  # where the existing teacher's secret headers live
        self.setWindowTitle("Edit teacher" if existing else "Add teacher")
        self.setMinimumWidth(640)  # room for the model, the served list and its button
        self.message = MessageBar(self)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. gpt-4o-mini")
        self.kind = QComboBox()
        self.kind.addItem("OpenAI-compatible endpoint", "openai")
        self.kind.addItem("Local Hugging Face model", "local")
        self.base_url = QLineEdit()
        self.base_url.setPlaceholderText("https://api.openai.com/v1 or http://localhost:8000/v1")
        self.preset = QComboBox()
        self.preset.addItem("Custom: any OpenAI-compatible endpoint", None)
        for p in PRESETS:
            self.preset.addItem(p.title, p.key)
        self.preset_info = hint("")
        self.preset_info.setWordWrap(True)
        self.preset_info.setTextFormat(Qt.TextFormat.RichText)
        self.model = QLineEdit()
        self.model.setPlaceholderText("model name at the endpoint")
        # the models the server lists, fetched off the GUI thread; picking one fills Model
        self.served = QComboBox()
        self.served.setMinimumContentsLength(18)
        self.served.setToolTip("The models the server lists at /v1/models: pick one")
        self.served.activated.connect(self.on_served_picked)
        self.list_models_button = QPushButton("List served models")
        self.list_models_button.setToolTip("Ask the server which models it serves (GET /models)")
        self.list_models_button.clicked.connect(self.fetch_models)
        self.models_status = hint("")
        model_row = QHBoxLayout()
        model_row.setContentsMargins(0, 0, 0, 0)
        model_row.addWidget(self.model, 1)
        model_row.addWidget(self.served)
        model_row.addWidget(self.list_models_button)
        self.model_row = QWidget()
        self.model_row.setLayout(model_row)
        self.models_job: Job | None = None
        self.path = QLineEdit()
        self.path.setPlaceholderText("folder with config.json and the weights")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.choose_folder)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path, 1)
        path_row.addWidget(browse)
        self.path_row = QWidget()
        self.path_row.setLayout(path_row)
        path_row.setContentsMargins(0, 0, 0, 0)

        self.key_keyring = QRadioButton("Store in the OS keyring")
        self.key_env = QRadioButton("Read from an environment variable")
        self.key_none = QRadioButton("No key (a local server)")
        self.key_group = QButtonGroup(self)
        for button in (self.key_keyring, self.key_env, self.key_none):
            self.key_group.addButton(button)
        self.api_key = QLineEdit()
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setPlaceholderText(
            "leave empty to keep the stored key" if existing else "paste the API key"
        )
        self.env_name = QLineEdit()
        self.env_name.setPlaceholderText("e.g. OPENAI_API_KEY")
        self.price_in = QDoubleSpinBox()
        self.price_out = QDoubleSpinBox()
        for box in (self.price_in, self.price_out):
            box.setRange(0, 1000)
            box.setDecimals(3)
            box.setSuffix(" USD / M tokens")

        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Kind", self.kind)
        form.addRow("Server", self.preset)
        form.addRow("", self.preset_info)
        form.addRow("Base URL", self.base_url)
        form.addRow("Model", self.model_row)
        form.addRow("", self.models_status)
        form.addRow("Model folder", self.path_row)
        key_box = QVBoxLayout()
        key_box.addWidget(self.key_keyring)
        key_box.addWidget(self.api_key)
        key_box.addWidget(self.key_env)
        key_box.addWidget(self.env_name)
        key_box.addWidget(self.key_none)
        if not keyring_ok:
            key_box.addWidget(hint("No working OS keyring was found: use an environment variable."))
        self.key_box = key_box
        form.addRow("API key", key_box)
        form.addRow("Input price", self.price_in)
        form.addRow("Output price", self.price_out)
        self.form = form

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.try_accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addLayout(form)
        layout.addWidget(buttons)

        self.kind.currentIndexChanged.connect(self.update_visibility)
        self.key_group.buttonToggled.connect(self.update_visibility)
        self.preset.currentIndexChanged.connect(self.on_preset_chosen)
        self.key_keyring.setEnabled(
            keyring_ok or bool(existing and existing.key_source == "keyring")
        )
        if existing:
            self.load(existing)
        else:
            (self.key_keyring if keyring_ok else self.key_env).setChecked(True)
        self.update_visibility()
        self.show_served([])
        self.config: TeacherConfig | None = None
        self.key: str | None = None

    def load(self, t: TeacherConfig) -> None:
        self.name.setText(t.name)
        self.name.setReadOnly(True)
        self.kind.setCurrentIndex(0 if t.kind == "openai" else 1)
        self.base_url.setText(shown_url(t.base_url))  # a password shows as ***, and is kept
        known = [p.key for p in PRESETS if p.base_url == (t.base_url or "").rstrip("/")]
        self.preset.blockSignals(True)  # editing: show the matching preset, change nothing
        self.preset.setCurrentIndex(self.preset.findData(known[0]) if known else 0)
        self.preset.blockSignals(False)
        self.show_preset_info(self.chosen_preset())
        self.model.setText(t.model or "")
        self.path.setText(t.path or "")
        {"keyring": self.key_keyring, "env": self.key_env, "none": self.key_none}[
            t.key_source
        ].setChecked(True)
        self.env_name.setText(t.key_env or "")
        self.price_in.setValue(t.price_in)
        self.price_out.setValue(t.price_out)

    @Slot()
    def update_visibility(self) -> None:
        remote = self.kind.currentData() == "openai"
        # A local model needs no endpoint, preset, key or price: only its folder.
        rows = (self.base_url, self.model_row, self.preset, self.preset_info, self.key_box)
        for widget in (*rows, self.price_in, self.price_out):
            self.form.setRowVisible(widget, remote)
        self.form.setRowVisible(self.models_status, remote and bool(self.models_status.text()))
        self.form.setRowVisible(self.path_row, not remote)
        self.api_key.setEnabled(self.key_keyring.isChecked())
        self.env_name.setEnabled(self.key_env.isChecked())

    # -- presets and the served models ----------------------------------------------------
    def chosen_preset(self) -> Preset | None:
        key = self.preset.currentData()
        return next((p for p in PRESETS if p.key == key), None)

    def show_preset_info(self, preset: Preset | None) -> None:
        if preset is None:
            self.preset_info.setText("Give the base URL of any OpenAI-compatible server.")
            return
        # `commands` in the shared text become code in the dialog
        parts = html.escape(preset.summary()).split("`")
        self.preset_info.setText(
            "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
        )

    @Slot()
    def on_preset_chosen(self) -> None:
        """Fill the base URL and the key source; list the models of a local server."""
        preset = self.chosen_preset()
        self.show_preset_info(preset)
        if preset is None:
            return
        self.base_url.setText(preset.base_url)
        if preset.needs_key:
            (self.key_keyring if self.key_keyring.isEnabled() else self.key_env).setChecked(True)
        else:
            self.key_none.setChecked(True)
        self.show_served([])
        if preset.lists_models:
            self.fetch_models()

    def request_key(self) -> str | None:
        """The key the dialog would use (typed, or from the named variable), for listing."""
        if self.key_keyring.isChecked():
            return self.api_key.text().strip() or None
        if self.key_env.isChecked():
            import os

            return os.environ.get(self.env_name.text().strip()) or None
        return None

    @Slot()
    def fetch_models(self) -> None:
        """GET {base URL}/models in a worker thread; the GUI never waits on the network."""
        from kdstudio.teachers.servers import list_models

        url = self.base_url.text().strip()
        if not url:
            self.set_models_status("Give the base URL first.")
            return
        if self.models_job is not None and self.models_job.running:
            self.models_job.stop("superseded")
        key, existing, ws_id = self.request_key(), self.existing, self.workspace_id
        address = self.typed_base_url()

        def fetch(sink, cancel) -> list[str]:
            headers = dict(existing.headers) if existing else {}
            if existing is not None and existing.secret_headers and ws_id:
                headers = secrets.resolve_headers(existing, ws_id)  # the keyring may block
            return list_models(address, key, headers, timeout=10.0)

        self.set_models_status(f"Asking {shown_url(address)} which models it serves…")
        self.list_models_button.setEnabled(False)
        job = Job(f"list models at {shown_url(address)}", fetch, background=True)
        job.succeeded.connect(self.on_models_listed)
        job.errored.connect(self.on_models_failed)
        job.ended.connect(self.on_models_job_ended)
        self.models_job = job.start()

    @Slot(object)
    def on_models_listed(self, models: list[str]) -> None:
        if self.sender() is not self.models_job:
            return  # an older request answering late
        self.show_served(models)
        if not models:
            self.set_models_status("The server lists no models: type the model's name.")
            return
        self.set_models_status(
            f"{len(models)} model{'s' * (len(models) != 1)} served: pick one from the list."
        )
        if not self.model.text().strip():
            self.model.setText(models[0])

    @Slot(object)
    def on_models_failed(self, info: ErrorInfo) -> None:
        if self.sender() is self.models_job:
            self.show_served([])
            self.set_models_status(f"Could not list the models: {info.summary}")

    @Slot()
    def on_models_job_ended(self) -> None:
        self.list_models_button.setEnabled(True)

    def show_served(self, models: list[str]) -> None:
        self.served.clear()
        self.served.addItems(models)
        self.served.setVisible(bool(models))
        current = self.model.text().strip()
        if current in models:
            self.served.setCurrentText(current)

    @Slot(int)
    def on_served_picked(self, index: int) -> None:
        self.model.setText(self.served.itemText(index))

    def set_models_status(self, text: str) -> None:
        self.models_status.setText(text)
        self.form.setRowVisible(self.models_status, bool(text))

    @Slot()
    def choose_folder(self) -> None:
        folder = file_dialogs.existing_folder(self, "Local teacher model folder")
        if folder:
            self.path.setText(folder)

    def key_source(self) -> str:
        if self.key_keyring.isChecked():
            return "keyring"
        return "env" if self.key_env.isChecked() else "none"

    def typed_base_url(self) -> str:
        """The base URL in the form; the existing teacher's own when its masked form was
        left as shown (its password is not in the form)."""
        typed = self.base_url.text().strip()
        previous = self.existing.base_url if self.existing else None
        return previous if previous and typed == shown_url(previous) else typed

    def build(self) -> TeacherConfig:
        remote = self.kind.currentData() == "openai"
        previous = self.existing
        return TeacherConfig(
            name=self.name.text().strip(),
            kind="openai" if remote else "local",
            base_url=self.typed_base_url() if remote else None,
            model=self.model.text().strip() if remote else (self.model.text().strip() or None),
            path=None if remote else self.path.text().strip(),
            key_source=self.key_source() if remote else "none",
            key_env=self.env_name.text().strip() if self.key_env.isChecked() else None,
            headers=previous.headers if previous else {},
            secret_headers=previous.secret_headers if previous else [],
            price_in=self.price_in.value() if remote else 0.0,  # a local model costs nothing
            price_out=self.price_out.value() if remote else 0.0,
            capabilities=previous.capabilities if previous else None,
        )

    @Slot()
    def try_accept(self) -> None:
        try:
            config = self.build()
        except UserError as exc:
            self.message.show_message(
                str(exc).replace("--base-url", "Base URL").replace("--model", "Model"), "error"
            )
            return
        problem = model_folder_problem(config.path or "") if config.kind == "local" else None
        if problem is not None:  # said here, not when a collection first loads it
            self.message.show_message(f"Model folder: {problem}.", "error")
            return
        key = self.api_key.text().strip()
        needs_key = config.key_source == "keyring" and not (
            self.existing and self.existing.key_source == "keyring"
        )
        if needs_key and not key:
            self.message.show_message("Paste the API key, or choose another key source.", "error")
            return
        self.config, self.key = config, key or None
        self.accept()


class TeachersPanel(Panel):
    title = "Teachers"
    key = "teachers"
    window_actions = (("&Add a teacher…", "Ctrl+N", "add_teacher"),)
    teachers_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.keyring_ok = True
        self.keyring_message = ""
        self.model = ListTableModel(COLUMNS)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for i, col in enumerate(COLUMNS):
            if col.width:
                self.table.setColumnWidth(i, col.width)
        self.table.doubleClicked.connect(self.edit_selected)
        self.table.selectionModel().selectionChanged.connect(self.show_selected)

        self.add_button = QPushButton("Add teacher…")
        self.add_button.setToolTip("Add a teacher (Ctrl+N)")
        self.edit_button = QPushButton("Edit…")
        self.remove_button = QPushButton("Remove")
        self.probe_button = QPushButton("Probe")
        self.probe_button.setToolTip("Ask the teacher what it can give (logprobs, top-k, …)")
        self.add_button.clicked.connect(self.add_teacher)
        self.edit_button.clicked.connect(self.edit_selected)
        self.remove_button.clicked.connect(self.remove_selected)
        self.probe_button.clicked.connect(self.probe_selected)
        buttons = QHBoxLayout()
        for b in (self.add_button, self.edit_button, self.remove_button, self.probe_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.keyring_label = QLabel()
        buttons.addWidget(self.keyring_label)

        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.detail.setPlaceholderText("Select a teacher to see its settings and capabilities.")
        detail_box = QWidget()
        dl = QVBoxLayout(detail_box)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addWidget(heading("Details"))
        dl.addWidget(self.detail)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(detail_box)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.body.addWidget(heading("Teachers"))
        self.body.addWidget(
            hint(
                "A teacher is an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama) or a "
                "local model folder. Keys go to the OS keyring, never into the workspace."
            )
        )
        self.body.addLayout(buttons)
        self.body.addWidget(split, 1)
        self.update_buttons()

    # -- workspace -----------------------------------------------------------------------
    def set_workspace(self, ws) -> None:
        super().set_workspace(ws)
        if ws is not None:
            self.check_keyring()

    def refresh(self) -> None:
        if self.ws is None:
            return
        selected = self.selected()
        teachers = self.ws.list_teachers()
        self.model.set_rows(teachers)
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()
        if selected is not None:
            for i, t in enumerate(teachers):
                if t.name == selected.name:
                    self.table.selectRow(i)
        self.update_buttons()
        if self.isVisible():  # a refresh behind another tab (the CLI added one) says nothing there
            self.status_changed.emit(plural(len(teachers), "teacher"))

    def teachers(self) -> list[TeacherConfig]:
        return list(self.model.rows)

    def selected(self) -> TeacherConfig | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row(rows[0].row()) if rows else None

    def select_teacher(self, name: str) -> None:
        for i, t in enumerate(self.model.rows):
            if t.name == name:
                self.table.selectRow(i)

    def update_buttons(self) -> None:
        has = self.selected() is not None
        busy = bool(self.running_jobs())
        for b in (self.edit_button, self.remove_button, self.probe_button):
            b.setEnabled(has and not busy)
        self.add_button.setEnabled(self.ws is not None and not busy)

    @Slot()
    def show_selected(self) -> None:
        self.update_buttons()
        t = self.selected()
        if t is None:
            self.detail.clear()
            return
        lines = [
            f"name:        {t.name}",
            f"kind:        {t.kind}",
            f"model:       {t.model or ''}",
            f"where:       {shown_url(t.base_url) if t.kind == 'openai' else t.path}",
            f"key:         {_key_text(t)}",
            *_headers_lines(t),
            f"prices:      {_price_text(t)}",
            "",
            "capabilities:",
            _caps_lines(t.capabilities),
        ]
        self.detail.setPlainText("\n".join(lines))

    # -- keyring -------------------------------------------------------------------------
    def check_keyring(self) -> None:
        """Probe the keyring backend off the GUI thread (some setups hang until a timeout)."""
        self.keyring_label.setText("checking the OS keyring…")
        job = self.start_job("keyring probe", _probe_keyring, background=True)
        job.succeeded.connect(self.on_keyring_checked)
        job.start()

    @Slot(object)
    def on_keyring_checked(self, status: secrets.BackendStatus) -> None:
        self.keyring_ok = status.ok
        self.keyring_message = status.message
        if status.ok:
            self.keyring_label.setText("OS keyring: available")
        else:
            self.keyring_label.setText("OS keyring: unavailable")
            self.message.show_message(
                f"No working OS keyring ({status.backend.rsplit('.', 1)[-1]}), so API keys cannot "
                "be stored there. Install and unlock a Secret Service (e.g. gnome-keyring, or "
                "KWallet on KDE), or choose “Read from an environment variable” when adding a "
                "teacher.",
                "warning",
            )

    # -- add / edit / remove -------------------------------------------------------------
    @Slot()
    def add_teacher(self) -> None:
        if self.ws is None:
            return
        dialog = TeacherDialog(None, self.keyring_ok, self)
        dialog.setWindowModality(Qt.WindowModality.WindowModal)
        dialog.accepted.connect(self.on_dialog_accepted)
        dialog.open()
        self.dialog = dialog

    @Slot()
    def edit_selected(self) -> None:
        t = self.selected()
        if t is None or self.ws is None:
            return
        dialog = TeacherDialog(t, self.keyring_ok, self, workspace_id=self.ws.id)
        dialog.accepted.connect(self.on_dialog_accepted)
        dialog.open()
        self.dialog = dialog

    def edit_teacher_named(self, name: str) -> None:
        """Select teacher `name` and open its dialog (the fix a failed job offers)."""
        self.refresh()
        self.select_teacher(name)
        if self.selected() is not None and self.selected().name == name:
            self.edit_selected()
        else:
            self.show_message(f"There is no teacher named {name!r} any more.", "warning")

    @Slot()
    def on_dialog_accepted(self) -> None:
        dialog: TeacherDialog = self.sender()
        self.save_teacher(dialog.config, dialog.key, replace=dialog.existing is not None)

    def save_teacher(self, config: TeacherConfig, key: str | None, *, replace: bool) -> None:
        """Store the key (keyring calls may block) and the teacher, off the GUI thread."""
        ws = self.ws
        if not replace and config.name in ws.teacher_names():
            self.message.show_message(
                f"A teacher named {config.name!r} already exists: edit it, or choose another name.",
                "error",
            )
            return

        def save(sink, cancel) -> str:
            if key and config.key_source == "keyring":
                # First: if the keyring fails, nothing is added. This workspace's key only.
                secrets.store_key(ws.id, config.name, key)
            ws.add_teacher(config, replace=replace)
            return config.name

        self.message.show_message(f"Saving teacher {config.name!r}…", "info")
        job = self.start_job(f"save teacher {config.name}", save)
        job.succeeded.connect(self.on_teacher_saved)
        job.ended.connect(self.update_buttons)
        job.start()
        self.update_buttons()

    @Slot(object)
    def on_teacher_saved(self, name: str) -> None:
        self.refresh()
        self.select_teacher(name)
        t = self.selected()
        where = " (key stored in the OS keyring)" if t and t.key_source == "keyring" else ""
        self.message.show_message(
            f"Saved teacher {name!r}{where}. Click Probe to check it.", "success"
        )
        self.teachers_changed.emit()
        self.workspace_changed.emit()

    @Slot()
    def remove_selected(self) -> None:
        t = self.selected()
        if t is None:
            return
        answer = QMessageBox.question(
            self,
            "Remove teacher",
            f"Remove teacher {t.name!r}"
            + (" and delete its key from the OS keyring?" if t.key_source == "keyring" else "?")
            + "\nCollected outputs stay in the workspace.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        self.remove_teacher(t)

    def remove_teacher(self, t: TeacherConfig) -> None:
        ws = self.ws

        def remove(sink, cancel) -> str:
            if t.key_source == "keyring":
                secrets.delete_key(ws.id, t.name)  # this workspace's key only
            ws.remove_teacher(t.name)
            return t.name

        job = self.start_job(f"remove teacher {t.name}", remove)
        job.succeeded.connect(self.on_teacher_removed)
        job.ended.connect(self.update_buttons)
        job.start()

    @Slot(object)
    def on_teacher_removed(self, name: str) -> None:
        self.refresh()
        self.message.show_message(f"Removed teacher {name!r}.", "info")
        self.teachers_changed.emit()
        self.workspace_changed.emit()

    # -- probe ---------------------------------------------------------------------------
    @Slot()
    def probe_selected(self) -> None:
        t = self.selected()
        if t is None or self.ws is None:
            return
        ws = self.ws

        def probe(sink, cancel) -> dict:
            from kdstudio.teachers.probe import probe

            teacher = ws.get_teacher(t.name)
            key, headers = None, None
            if teacher.kind == "openai":
                key = secrets.resolve_key(teacher, ws.id)
                headers = secrets.resolve_headers(teacher, ws.id)
            caps = probe(teacher, key, headers=headers)
            ws.set_teacher_capabilities(teacher.name, caps)
            return caps

        self.message.show_message(f"Probing {t.name!r}…", "info")
        job = self.start_job(f"probe {t.name}", probe)
        job.succeeded.connect(self.on_probed)
        job.ended.connect(self.update_buttons)
        job.start()
        self.update_buttons()

    @Slot(object)
    def on_probed(self, caps: Any) -> None:
        from kdstudio.teachers.probe import summary_lines

        self.refresh()
        self.show_selected()
        self.teachers_changed.emit()
        problems = [finding for what, finding in summary_lines(caps) if what == "problem"]
        if caps.get("auth") == "rejected":
            self.message.show_message(
                "Authentication failed: the server rejected the API key. Edit the teacher and "
                "paste the right key (or fix the environment variable). " + " ".join(problems),
                "error",
            )
        elif not caps.get("reachable"):
            self.message.show_message(
                "The teacher could not be reached: check the base URL and that the server runs. "
                + " ".join(problems),
                "error",
            )
        elif caps.get("model_exists") is False:
            self.message.show_message(
                "The server has no model of that name: edit the teacher's model. "
                + " ".join(problems),
                "error",
            )
        else:
            found = "; ".join(f"{w}: {f}" for w, f in summary_lines(caps) if w != "problem")
            level = "warning" if problems else "success"
            self.message.show_message(f"Probe done — {found}. {' '.join(problems)}".strip(), level)


def _caps_lines(caps: dict | None) -> str:
    if not caps:
        return "  not probed yet — click Probe"
    from kdstudio.teachers.probe import summary_lines

    return "\n".join(f"  {what:<16}{finding}" for what, finding in summary_lines(caps))


def _probe_keyring(sink, cancel) -> secrets.BackendStatus:
    return secrets.probe_backend()
