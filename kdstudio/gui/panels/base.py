"""What every panel shares: the workspace, an inline message bar, its jobs."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QVBoxLayout, QWidget

from kdstudio.gui.errors import report_unexpected
from kdstudio.gui.problems import FIX_ACTIONS, window_words
from kdstudio.gui.widgets import MessageBar
from kdstudio.gui.workers import PROGRESS_HZ, ErrorInfo, Job, JobFn
from kdstudio.workspace import Workspace


class Panel(QWidget):
    """A panel: `set_workspace` when a workspace opens, `refresh` when shown,
    `workspace_updated` when another process changed the workspace while it is on screen.

    Subclasses put their widgets into `self.body` (below the message bar) and start long
    work with `self.start_job(name, fn)`. A panel is made for one workspace: the window
    makes fresh panels for another.
    """

    title = ""
    key = ""
    # (menu text, keys, method): commands the window offers from any panel (its Actions
    # menu and Help list them), e.g. Ctrl+N adds a teacher whichever panel has the focus.
    window_actions: tuple[tuple[str, str, str], ...] = ()
    status_changed = Signal(str)  # a line for the main window's status bar
    workspace_changed = Signal()  # something this panel wrote that other panels show
    workspace_damaged = Signal(str)  # SQLite found the workspace database damaged
    fix_requested = Signal(str, str)  # (fix, subject): an action another panel carries out

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ws: Workspace | None = None
        self.jobs: list[Job] = []
        self.message = MessageBar(self)
        self.message.action_triggered.connect(self.on_message_action)
        self._message_slot: tuple[str, Callable[[], object]] | None = None
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

    def retire(self) -> None:
        """The window is done with this panel (another workspace opens): nothing of it may
        touch its workspace again, so its timers stop before it is deleted."""
        self.ws = None
        for timer in self.findChildren(QTimer):
            timer.stop()
        self.deleteLater()

    def workspace_updated(self) -> None:
        """Another process (or job) changed the workspace while this panel is on screen.

        Re-reads like `refresh`; a panel whose refresh would disturb the person (a reset
        table, a re-shown message) overrides it with something gentler."""
        self.refresh()

    # -- messages ------------------------------------------------------------------------
    def show_message(
        self,
        text: str,
        level: str = "info",
        action: str | None = None,
        on_action: Callable[[], object] | None = None,
    ) -> None:
        """An inline message; `on_action` runs when its `action` button is clicked."""
        self.message.show_message(text, level, action=action)
        self._message_slot = (self.message.text, on_action) if on_action else None

    @Slot()
    def on_message_action(self) -> None:
        # Only for the message it came with: a panel may show others on the bar directly.
        if self._message_slot is not None and self._message_slot[0] == self.message.text:
            self._message_slot[1]()

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
        """Expected problems inline, in the window's words, with the action that fixes
        them; a damaged workspace to the main window; the unexpected in the error dialog."""
        if info.damaged:
            self.workspace_damaged.emit(info.summary)
        elif info.expected:
            text = window_words(info.summary)
            text = text[:1].upper() + text[1:]
            action = FIX_ACTIONS.get(info.fix or "")
            fix, subject = info.fix or "", info.subject or ""
            self.show_message(
                text,
                "error",
                action=action,
                on_action=(lambda: self.fix_requested.emit(fix, subject)) if action else None,
            )
        else:
            self.show_message(f"Failed: {info.summary}", "error")
            report_unexpected(info.summary, info.details, self)
