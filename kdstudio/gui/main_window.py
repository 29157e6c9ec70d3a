"""The main window: lays out the panels, menus and status bar, and owns the workspace.

Everything a panel does lives in the panel; everything the window does for a panel
(drops, shortcuts, quitting with a job running) is delegated to it. The window owns the
open workspace: switching to another stops the old one's jobs, gives the new one fresh
panels and then closes the old one (every connection, in every thread); a workspace that
cannot be opened shows the WorkspaceProblemPage instead of the panels. Changes made by
other processes reach the panel on screen through the WorkspaceWatcher (kdstudio.gui.live).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from kdstudio import __version__
from kdstudio.errors import UserError
from kdstudio.gui import file_dialogs, workers
from kdstudio.gui import settings as gui_settings
from kdstudio.gui.errors import is_damage, relay
from kdstudio.gui.live import DemoBanner, RefreshPacer, WorkspaceWatcher
from kdstudio.gui.panels.base import Panel
from kdstudio.gui.trackers import stop_all as stop_tensorboards
from kdstudio.gui.widgets import MessageBar
from kdstudio.gui.workspace_page import WorkspaceProblemPage
from kdstudio.workspace import Workspace, WorkspaceUnavailable

STOP_TIMEOUT_S = 60.0  # closing waits at most this long for jobs to checkpoint and return
OPEN_TIMEOUT_S = 3.0  # the window waits this long for another program's lock, then says so


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
        self._message_action: tuple[str, Path | None] = ("open", None)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.currentChanged.connect(self.on_tab_changed)
        self.panels: dict[str, Panel] = {}
        self._stale: set[str] = set()  # panels to re-read when shown (the workspace changed)
        self.build_panels()
        self.problem = WorkspaceProblemPage()
        self.problem.open_requested.connect(self.open_workspace_dialog)
        self.problem.create_requested.connect(self.create_workspace_dialog)
        self.problem.retry_requested.connect(self.retry_open)
        self.problem.recover_requested.connect(self.recover_problem_workspace)
        self._recovery: workers.Job | None = None
        self.demo_banner = DemoBanner()
        self.demo_banner.result_requested.connect(self.show_demo_result)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.tabs)
        self.stack.addWidget(self.problem)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.demo_banner)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        # Over the top of the window, not in its layout: the rare message about the
        # workspace itself moves nothing when it appears.
        self.message = MessageBar(central, overlay=True)
        self.message.action_triggered.connect(self.on_message_action)
        self.workspace_label = QLabel()
        self.jobs_label = QLabel()
        self.statusBar().addPermanentWidget(self.jobs_label)
        self.statusBar().addPermanentWidget(self.workspace_label)
        self.jobs_timer = QTimer(self)
        self.jobs_timer.setInterval(500)
        self.jobs_timer.timeout.connect(self.update_jobs_label)
        self.jobs_timer.start()
        self.watcher = WorkspaceWatcher(self)
        self.watcher.changed.connect(self.on_external_change)
        self.watcher.damaged.connect(self.on_damaged)
        relay().damaged.connect(self.on_damaged)
        self.pacer = RefreshPacer()
        self.paced = QTimer(self)  # a refresh the pacer held back runs when it is due
        self.paced.setSingleShot(True)
        self.paced.setInterval(250)
        self.paced.timeout.connect(self.refresh_visible)
        self.build_menus()
        self.restore_geometry()
        if ws is not None:
            self.set_workspace(ws)
        else:
            self.show_problem("none", None, "Open a workspace folder, or create a new one.")

    def build_panels(self) -> None:
        """Fresh panels (again): a workspace starts with no plot, form, filter or ETA of another."""
        current = self.current_key()
        self.tabs.blockSignals(True)
        for panel in self.panels.values():
            panel.retire()
        self.tabs.clear()
        self.panels = {}
        for cls in panel_classes():
            panel = cls(self)
            self.panels[panel.key] = panel
            self.tabs.addTab(panel, panel.title)
            panel.status_changed.connect(self.show_status)
            panel.workspace_changed.connect(self.on_workspace_changed)
            panel.workspace_damaged.connect(self.on_damaged)
            panel.fix_requested.connect(self.on_fix_requested)
        if "runs" in self.panels and "train" in self.panels:
            self.panels["runs"].resume_requested.connect(self.resume_run)
        if current in self.panels:
            self.tabs.setCurrentWidget(self.panels[current])
        self.tabs.blockSignals(False)

    def current_key(self) -> str | None:
        panel = self.tabs.currentWidget()
        return panel.key if isinstance(panel, Panel) else None

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
        # A recent workspace that is gone is said so, not silently made again, empty.
        self.open_workspace(self.sender().data(), create=False)

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
            self.refresh_panel(panel)

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
        folder = file_dialogs.existing_folder(self, "Open or create a workspace folder", start)
        if folder:
            self.open_workspace(folder)

    @Slot()
    def create_workspace_dialog(self) -> None:
        folder = file_dialogs.existing_folder(
            self, "Choose or make an empty folder for the new workspace", str(Path.home())
        )
        if folder:
            self.open_workspace(folder)

    def open_workspace(self, path: str | Path, *, ask: bool = True, create: bool = True) -> bool:
        """Open `path` instead of the current workspace; False (and a message) if it cannot.

        Jobs of the current workspace are stopped first (after asking, when `ask`): none of
        them runs on once another workspace is shown."""
        if not self.stop_jobs_for_switch(ask):
            return False
        try:
            ws = Workspace.open(path, create=create, open_timeout_s=OPEN_TIMEOUT_S)
        except WorkspaceUnavailable as exc:
            self.cannot_open(exc.reason, exc.path, str(exc))
            return False
        except UserError as exc:
            self.cannot_open("unopenable", Path(path).expanduser().resolve(), str(exc))
            return False
        self.set_workspace(ws)
        return self.ws is ws  # not when its first reads found it damaged

    def cannot_open(self, reason: str, path: Path, text: str) -> None:
        if self.ws is None:
            self.show_problem(reason, path, text)
            return
        damaged = reason == "damaged"
        self._message_action = ("recover" if damaged else "open", path)
        self.message.show_message(
            f"Could not open the workspace: {text}",
            "error",
            action="Recover into a new file…" if damaged else "Open another…",
        )

    def set_workspace(self, ws: Workspace) -> None:
        old = self.ws
        if old is not None and old is not ws:
            self.build_panels()
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
        self.stack.setCurrentWidget(self.tabs)
        self._stale.clear()
        self.pacer.forget()
        try:
            for panel in self.panels.values():
                panel.set_workspace(ws)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self.on_damaged(str(exc))
        else:
            self.watcher.watch(ws)
            self.demo_banner.watch(ws.root)
        if old is not None and old is not ws:
            old.close()

    def close_workspace(self) -> Path | None:
        """Stop the workspace's jobs (bounded), close it, empty the panels; its folder."""
        ws, self.ws = self.ws, None
        self.watcher.watch(None)
        if ws is None:
            return None
        self.stop_jobs(STOP_TIMEOUT_S)
        self.build_panels()
        self.demo_banner.watch(None)
        ws.close()
        self.workspace_label.setText("")
        self.setWindowTitle("kdstudio")
        return ws.root

    def show_problem(self, reason: str, path: Path | None, text: str) -> None:
        self.problem.show_problem(reason, path, text)
        self.stack.setCurrentWidget(self.problem)
        self.message.clear()

    @Slot(str)
    def on_damaged(self, text: str) -> None:
        """SQLite found the open workspace damaged: close it and offer recovery."""
        if self.ws is None:
            return
        root = self.close_workspace()
        self.show_problem(
            "damaged",
            root,
            f"SQLite reports: {text}. Nothing more is written to it; kdstudio can recover what "
            "is readable into a new file and keep the damaged one.",
        )

    @Slot()
    def retry_open(self) -> None:
        if self.problem.path is not None:
            self.open_workspace(self.problem.path, create=self.problem.reason != "missing")

    @Slot()
    def on_message_action(self) -> None:
        kind, path = self._message_action
        if kind == "recover" and path is not None:
            self.recover(path)
        else:
            self.open_workspace_dialog()

    @Slot()
    def recover_problem_workspace(self) -> None:
        if self.problem.path is not None:
            self.recover(self.problem.path)

    def recover(self, root: Path, *, ask: bool = True) -> workers.Job | None:
        """Recover `root`'s damaged database into a new file (kdstudio.recovery) in a job,
        then open it."""
        if ask:
            answer = QMessageBox.question(
                self,
                "Recover the workspace?",
                f"kdstudio will copy every readable row of {root / 'kdstudio.sqlite'} into a "
                "new database and put it in place. The damaged database is kept beside it as "
                "kdstudio.damaged-<time>.sqlite; nothing is deleted.\n\nRecover now?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return None
        if self.ws is not None and self.ws.root == root:
            self.close_workspace()

        def run(sink, cancel):
            from kdstudio.recovery import recover_workspace

            return recover_workspace(root)

        self.problem.set_busy(True)
        self.problem.status.show_message(f"Recovering {root}…", "info")
        job = workers.Job("recover workspace", run)
        job.succeeded.connect(self.on_recovered)
        job.errored.connect(self.on_recovery_failed)
        self._recovery = job
        return job.start()

    @Slot(object)
    def on_recovered(self, result: Any) -> None:
        root = result.kept.parent
        if self.open_workspace(root, ask=False):
            self.message.show_message(f"Workspace recovered: {result.line()}.", "success")
        else:
            self.problem.status.show_message(f"Recovered: {result.line()}.", "success")

    @Slot(object)
    def on_recovery_failed(self, info: workers.ErrorInfo) -> None:
        self.problem.set_busy(False)
        if not info.expected:
            from kdstudio.gui.errors import report_unexpected

            report_unexpected(info.summary, info.details, self)
        self.problem.status.show_message(f"Recovery failed: {info.summary}", "error")

    @Slot()
    def on_workspace_changed(self) -> None:
        """A panel wrote something (a teacher, a dataset, a run): others re-read lazily."""
        writer = self.sender().key if isinstance(self.sender(), Panel) else ""
        self._stale |= set(self.panels) - {writer}

    @Slot()
    def on_external_change(self) -> None:
        """Another connection committed: the panel on screen re-reads now, others when shown."""
        self._stale |= set(self.panels)
        self.refresh_visible()

    @Slot()
    def refresh_visible(self) -> None:
        panel = self.tabs.currentWidget()
        if not isinstance(panel, Panel) or panel.key not in self._stale or self.ws is None:
            return
        if not self.pacer.due(panel.key):
            self.paced.start()
            return
        self._stale.discard(panel.key)
        self.refresh_panel(panel, external=True)

    def refresh_panel(self, panel: Panel, *, external: bool = False) -> None:
        """Re-read a panel, timing it for the pacer; a damaged database is not a crash."""
        started = time.monotonic()
        try:
            panel.workspace_updated() if external else panel.refresh()
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self.on_damaged(str(exc))
        finally:
            self.pacer.record(panel.key, started, time.monotonic())

    @Slot(int)
    def on_tab_changed(self, index: int) -> None:
        panel = self.tabs.widget(index)
        if isinstance(panel, Panel) and panel.key in self._stale and self.ws is not None:
            self._stale.discard(panel.key)
            self.refresh_panel(panel)

    @Slot(str, str)
    def on_fix_requested(self, fix: str, subject: str) -> None:
        """A panel's message offered a fix that another panel carries out."""
        if fix == "edit_teacher" and "teachers" in self.panels:
            self.show_panel("teachers").edit_teacher_named(subject)
        elif fix in ("rename_run", "resume_run") and "train" in self.panels:
            train = self.show_panel("train")
            train.choose_run_name() if fix == "rename_run" else train.offer_resume(subject)

    @Slot()
    def show_demo_result(self) -> None:
        from kdstudio.demo import STUDENT

        panel = self.show_panel("runs")
        if hasattr(panel, "select_run"):
            panel.select_run(STUDENT)
            if panel.eval_box.count() and panel.eval_box.currentData():
                panel.tabs.setCurrentIndex(1)  # the evaluation: before / after / teacher

    @Slot(str)
    def resume_run(self, name: str) -> None:
        """Runs panel → Train panel: the run's settings and curves, ready to continue."""
        self.show_panel("train").offer_resume(name)

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
        if not self.stop_jobs_for_switch(True, quitting=True):
            event.ignore()
            return
        self.save_geometry()
        self.close_workspace()  # every connection, in every thread
        stop_tensorboards()  # a TensorBoard the Runs panel started ends with the window
        event.accept()

    def stop_jobs_for_switch(self, ask: bool, *, quitting: bool = False) -> bool:
        """Stop every job before the workspace goes away; False if the person said no or a
        job did not stop in time (the workspace then stays open)."""
        jobs = workers.running_jobs(background=False)
        if jobs and ask:
            names = ", ".join(j.name for j in jobs)
            doing = "quit" if quitting else "open the other workspace"
            answer = QMessageBox.question(
                self,
                "Quit kdstudio?" if quitting else "Switch workspace?",
                f"Still running: {names}.\n\nStop (finishing the current step and saving a "
                f"checkpoint) and {doing}?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return False
        if not workers.running_jobs():
            return True
        if self.stop_jobs(STOP_TIMEOUT_S):
            return True
        if quitting:
            answer = QMessageBox.warning(
                self,
                "Still stopping",
                f"The job did not stop within {STOP_TIMEOUT_S:.0f} s. Quit anyway? "
                "Work up to its last saved checkpoint or row is kept.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            )
            return answer == QMessageBox.StandardButton.Yes
        self.message.show_message(
            f"A job did not stop within {STOP_TIMEOUT_S:.0f} s, so this workspace stays open; "
            "try again when it has stopped.",
            "warning",
        )
        return False

    def stop_jobs(self, timeout_s: float) -> bool:
        self.statusBar().showMessage("Stopping jobs: finishing the current step and saving…")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            return workers.stop_all(timeout_s)
        finally:
            QApplication.restoreOverrideCursor()
            self.statusBar().clearMessage()
