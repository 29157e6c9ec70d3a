"""What every panel shares: the workspace, an inline message bar, its jobs."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QVBoxLayout, QWidget

from kdstudio.gui.errors import report_unexpected
from kdstudio.gui.widgets import MessageBar
from kdstudio.gui.workers import PROGRESS_HZ, ErrorInfo, Job, JobFn
from kdstudio.workspace import Workspace


class Panel(QWidget):
    """A panel: `set_workspace` when a workspace opens, `refresh` when shown.

    Subclasses put their widgets into `self.body` (below the message bar) and start long
    work with `self.start_job(name, fn)`.
    """

    title = ""
    key = ""
    # (menu text, keys, method): commands the window offers from any panel (its Actions
    # menu and Help list them), e.g. Ctrl+N adds a teacher whichever panel has the focus.
    window_actions: tuple[tuple[str, str, str], ...] = ()
    status_changed = Signal(str)  # a line for the main window's status bar
    workspace_changed = Signal()  # something this panel wrote that other panels show

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ws: Workspace | None = None
        self.jobs: list[Job] = []
        self.message = MessageBar(self)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(10, 10, 10, 10)
        outer.setSpacing(8)
        outer.addWidget(self.message)
        self.body = QVBoxLayout()
        self.body.setSpacing(8)
        outer.addLayout(self.body, 1)

    def add_shortcut(self, keys: str, slot) -> QShortcut:
        """A shortcut active while focus is in this panel (panels may share keys, as
        Ctrl+Enter starts in Collect and in Train); see `window_actions` for any panel."""
        shortcut = QShortcut(QKeySequence(keys), self)
        shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        shortcut.activated.connect(slot)
        return shortcut

    def set_workspace(self, ws: Workspace | None) -> None:
        self.ws = ws
        self.message.clear()
        if ws is not None:
            self.refresh()

    def refresh(self) -> None:
        """Re-read what the panel shows from the workspace (cheap; called on tab switch)."""

    # -- jobs ----------------------------------------------------------------------------
    def start_job(
        self, name: str, fn: JobFn, *, background: bool = False, progress_hz: float = PROGRESS_HZ
    ) -> Job:
        job = Job(name, fn, background=background, progress_hz=progress_hz)
        self.jobs = [j for j in self.jobs if j.running]
        self.jobs.append(job)
        job.errored.connect(self.on_job_errored)
        return job

    def running_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.running]

    def describe_jobs(self) -> str:
        return ", ".join(j.name for j in self.running_jobs())

    @Slot(object)
    def on_job_errored(self, info: ErrorInfo) -> None:
        self.show_error(info)

    def show_error(self, info: ErrorInfo) -> None:
        """Expected problems inline; the unexpected in the error dialog."""
        if info.expected:
            self.message.show_message(info.summary, "error")
        else:
            self.message.show_message(f"Failed: {info.summary}", "error")
            report_unexpected(info.summary, info.details, self)
