"""The main window: lays out the panels, menus and status bar; nothing else.

Everything a panel does lives in the panel; everything the window does for a panel
(drops, shortcuts, quitting with a job running) is delegated to it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from kdstudio import __version__
from kdstudio.errors import UserError
from kdstudio.gui import settings as gui_settings
from kdstudio.gui import workers
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.widgets import MessageBar
from kdstudio.workspace import Workspace

STOP_TIMEOUT_S = 60.0  # closing waits at most this long for jobs to checkpoint and return


def panel_classes() -> list[type[Panel]]:
    """The panels, in tab order."""
    from kdstudio.gui.panels.teachers import TeachersPanel

    classes: list[type[Panel]] = [TeachersPanel]
    for module, name in (
        ("datasets", "DatasetsPanel"),
        ("collect", "CollectPanel"),
        ("outputs", "OutputsPanel"),
        ("train", "TrainPanel"),
        ("runs", "RunsPanel"),
    ):
        try:
            mod = __import__(f"kdstudio.gui.panels.{module}", fromlist=[name])
        except ModuleNotFoundError as exc:
            if exc.name == f"kdstudio.gui.panels.{module}":
                continue
            raise
        classes.append(getattr(mod, name))
    return classes


class MainWindow(QMainWindow):
    def __init__(self, ws: Workspace | None = None) -> None:
        super().__init__()
        self.ws: Workspace | None = None
        self.setWindowTitle("kdstudio")
        self.setAcceptDrops(True)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.panels: dict[str, Panel] = {}
        self._stale: set[str] = set()  # panels to re-read when shown (another panel wrote)
        for cls in panel_classes():
            panel = cls(self)
            self.panels[panel.key] = panel
            self.tabs.addTab(panel, panel.title)
            panel.status_changed.connect(self.show_status)
            panel.workspace_changed.connect(self.on_workspace_changed)
        self.tabs.currentChanged.connect(self.on_tab_changed)
        if "runs" in self.panels and "train" in self.panels:
            self.panels["runs"].resume_requested.connect(self.resume_run)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        # Over the top of the window, not in its layout: the rare message about the
        # workspace itself moves nothing when it appears.
        self.message = MessageBar(central, overlay=True)
        self.message.action_triggered.connect(self.open_workspace_dialog)
        self.workspace_label = QLabel()
        self.jobs_label = QLabel()
        self.statusBar().addPermanentWidget(self.jobs_label)
        self.statusBar().addPermanentWidget(self.workspace_label)
        self.jobs_timer = QTimer(self)
        self.jobs_timer.setInterval(500)
        self.jobs_timer.timeout.connect(self.update_jobs_label)
        self.jobs_timer.start()
        self.build_menus()
        self.restore_geometry()
        if ws is not None:
            self.set_workspace(ws)

    # -- menus and shortcuts -------------------------------------------------------------
    def build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = self.action(
            "&Open workspace…", QKeySequence.StandardKey.Open, self.open_workspace_dialog
        )
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Recent workspaces")
        self.recent_menu.aboutToShow.connect(self.fill_recent_menu)
        if "datasets" in self.panels:
            file_menu.addAction(self.action("&Import dataset…", "Ctrl+I", self.import_dataset))
            self.recent_files_menu = file_menu.addMenu("Import a recent file")
            self.recent_files_menu.aboutToShow.connect(self.fill_recent_files_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.action("&Quit", QKeySequence.StandardKey.Quit, self.close))

        view = self.menuBar().addMenu("&View")
        for i, panel in enumerate(self.panels.values()):
            act = self.action(panel.title, f"Ctrl+{i + 1}", self.show_panel_from_action)
            act.setData(panel.key)
            view.addAction(act)
        view.addSeparator()
        view.addAction(
            self.action("&Refresh", QKeySequence.StandardKey.Refresh, self.refresh_current)
        )

        actions = self.menuBar().addMenu("&Actions")
        for panel in self.panels.values():
            for text, keys, method in panel.window_actions:
                act = self.action(text, keys, self.trigger_panel_action)
                act.setData((panel.key, method))
                actions.addAction(act)

        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self.action("&About kdstudio", None, self.show_about))

    def action(self, text: str, shortcut, slot) -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(slot)
        return act

    @Slot()
    def fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        paths = gui_settings.recent("workspaces")
        if not paths:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        for path in paths:
            act = self.recent_menu.addAction(path)
            act.setData(path)
            act.triggered.connect(self.open_recent)

    @Slot()
    def fill_recent_files_menu(self) -> None:
        self.recent_files_menu.clear()
        paths = [p for p in gui_settings.recent("files") if Path(p).is_file()]
        if not paths:
            self.recent_files_menu.addAction("(none yet)").setEnabled(False)
        for path in paths:
            act = self.recent_files_menu.addAction(path)
            act.setData(path)
            act.triggered.connect(self.import_recent_file)

    @Slot()
    def import_recent_file(self) -> None:
        self.show_panel("datasets").import_files([self.sender().data()])

    @Slot()
    def open_recent(self) -> None:
        self.open_workspace(self.sender().data())

    @Slot()
    def trigger_panel_action(self) -> None:
        """A panel's command from the window (any panel may have the focus)."""
        key, method = self.sender().data()
        getattr(self.panels[key], method)()

    def shortcut_lines(self) -> list[str]:
        """What Help lists: the window's keys and every panel's window actions."""
        panel_keys = " · ".join(
            f"{keys} {text.replace('&', '').rstrip('…').lower()}"
            for panel in self.panels.values()
            for text, keys, _ in panel.window_actions
        )
        return [
            f"Ctrl+1…{len(self.panels)} panels · Ctrl+O open workspace · Ctrl+I import a "
            "dataset · F5 refresh",
            panel_keys,
            "Ctrl+Enter start (Collect, Train) · Outputs: Ctrl+F search · A accept · R reject · "
            "E edit · Ctrl+Enter save an edit",
        ]

    @Slot()
    def show_panel_from_action(self) -> None:
        self.show_panel(self.sender().data())

    def show_panel(self, key: str) -> Panel:
        panel = self.panels[key]
        self.tabs.setCurrentWidget(panel)
        return panel

    @Slot()
    def refresh_current(self) -> None:
        panel = self.tabs.currentWidget()
        if isinstance(panel, Panel) and self.ws is not None:
            panel.refresh()

    @Slot()
    def import_dataset(self) -> None:
        panel = self.show_panel("datasets")
        panel.choose_file()

    @Slot()
    def show_about(self) -> None:
        QMessageBox.about(
            self,
            "About kdstudio",
            f"<b>kdstudio {__version__}</b><p>A desktop studio for knowledge distillation of "
            "language models: teachers, prompts, outputs, training and evaluation, in one "
            "workspace.</p><p><b>Keyboard</b><br>" + "<br>".join(self.shortcut_lines()) + "</p>",
        )

    # -- workspace -----------------------------------------------------------------------
    @Slot()
    def open_workspace_dialog(self) -> None:
        start = str(self.ws.root) if self.ws else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open or create a workspace folder", start)
        if folder:
            self.open_workspace(folder)

    def open_workspace(self, path: str | Path) -> bool:
        if workers.running_jobs(background=False):
            self.message.show_message(
                "A job is running; stop it before switching workspaces.", "warning"
            )
            return False
        try:
            ws = Workspace.open(path)
        except UserError as exc:
            self.message.show_message(
                f"Could not open the workspace: {exc}", "error", action="Open another…"
            )
            return False
        self.set_workspace(ws)
        return True

    def set_workspace(self, ws: Workspace) -> None:
        old = self.ws
        self.ws = ws
        gui_settings.set_last_workspace(ws.root)
        gui_settings.add_recent("workspaces", ws.root)
        self.workspace_label.setText(f"workspace: {ws.root}")
        # Ending in the application's display name, so the platform does not add it a
        # second time ("kdstudio — ws — kdstudio"): "ws — kdstudio" on every system.
        self.setWindowTitle(
            f"{ws.root.name} — {QApplication.applicationDisplayName() or 'kdstudio'}"
        )
        self.message.clear()
        for panel in self.panels.values():
            panel.set_workspace(ws)
        if old is not None and old is not ws:
            old.close()

    @Slot()
    def on_workspace_changed(self) -> None:
        """A panel wrote something (a teacher, a dataset, a run): others re-read lazily."""
        writer = self.sender().key if isinstance(self.sender(), Panel) else ""
        self._stale |= set(self.panels) - {writer}

    @Slot(int)
    def on_tab_changed(self, index: int) -> None:
        panel = self.tabs.widget(index)
        if isinstance(panel, Panel) and panel.key in self._stale and self.ws is not None:
            self._stale.discard(panel.key)
            panel.refresh()

    @Slot(str)
    def resume_run(self, name: str) -> None:
        """Runs panel → Train panel: continue a run where its plots and controls live."""
        self.show_panel("train").resume_run(name)

    @Slot(str)
    def show_status(self, text: str) -> None:
        self.statusBar().showMessage(text, 8000)

    @Slot()
    def update_jobs_label(self) -> None:
        jobs = workers.running_jobs(background=False)
        self.jobs_label.setText(f"running: {', '.join(j.name for j in jobs)}" if jobs else "")

    # -- drag and drop (dataset files) ---------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        mime = event.mimeData()
        if "datasets" in self.panels and any(u.isLocalFile() for u in mime.urls()):
            event.acceptProposedAction()
            return
        event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.show_panel("datasets").import_files(paths)

    # -- geometry and closing ------------------------------------------------------------
    def restore_geometry(self) -> None:
        s = gui_settings.settings()
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 820)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        tab = s.value("window/tab")
        if tab in self.panels:
            self.tabs.setCurrentWidget(self.panels[tab])

    def save_geometry(self) -> None:
        s = gui_settings.settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        panel = self.tabs.currentWidget()
        if isinstance(panel, Panel):
            s.setValue("window/tab", panel.key)

    def closeEvent(self, event: QCloseEvent) -> None:
        jobs = workers.running_jobs(background=False)
        if jobs:
            names = ", ".join(j.name for j in jobs)
            answer = QMessageBox.question(
                self,
                "Quit kdstudio?",
                f"Still running: {names}.\n\nStop (finishing the current step and saving a "
                "checkpoint) and quit?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            if not self.stop_jobs(STOP_TIMEOUT_S):
                answer = QMessageBox.warning(
                    self,
                    "Still stopping",
                    f"The job did not stop within {STOP_TIMEOUT_S:.0f} s. Quit anyway? "
                    "Work up to its last saved checkpoint or row is kept.",
                    QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                )
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
        self.save_geometry()
        event.accept()

    def stop_jobs(self, timeout_s: float) -> bool:
        self.statusBar().showMessage("Stopping jobs: finishing the current step and saving…")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            return workers.stop_all(timeout_s)
        finally:
            QApplication.restoreOverrideCursor()
