"""Jobs in QThreads: a `QtSink` turns core events into Qt signals; a `Job` runs a core call.

A core job takes `(config, workspace, sink, cancel)`. A panel wraps it as `fn(sink, cancel)`
and hands it to `Job`; the call runs in a worker `QObject` moved to its own `QThread`. Worker
signals are connected to `@Slot` methods of GUI-thread objects (never lambdas: PySide6 has had
cross-thread crashes with lambda receivers), so every receiver runs on the GUI thread.

Stopping a job sets its `CancelToken`; the core finishes the current step or row, saves,
and returns. No thread is ever killed.
"""

from __future__ import annotations

import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QCoreApplication, QElapsedTimer, QObject, QThread, Signal, Slot

from kdstudio import workspace
from kdstudio.errors import Cancelled
from kdstudio.events import (
    CancelToken,
    Event,
    Failed,
    Finished,
    Log,
    Metrics,
    Progress,
    RowDone,
)
from kdstudio.events import Warning as WarningEvent

JobFn = Callable[[Any, CancelToken], Any]
PROGRESS_HZ = 20.0  # progress signals a second a job's sink lets through, by default


@dataclass(frozen=True)
class ErrorInfo:
    """An exception raised in a worker, carried to the GUI thread as plain values."""

    summary: str
    details: str
    expected: bool  # an expected failure: a message in the panel, not the error dialog
    fix: str | None = None  # what fixes it (kdstudio.gui.problems.FIX_ACTIONS)
    subject: str | None = None  # the teacher or run to fix
    damaged: bool = False  # SQLite found the workspace database damaged

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        from kdstudio.gui.errors import is_damage
        from kdstudio.gui.problems import expected_problem

        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if is_damage(exc):
            return cls(f"the workspace database is damaged ({exc})", details, True, damaged=True)
        problem = expected_problem(exc)
        if problem is None:
            return cls(f"{type(exc).__name__}: {exc}", details, False)
        return cls(problem, details, True, getattr(exc, "fix", None), getattr(exc, "subject", None))


class QtSink(QObject):
    """A core `Sink` whose `emit` re-emits each event as a Qt signal.

    It lives on the GUI thread; a job calls `emit` from its worker thread, so connected
    GUI-thread slots receive the events through queued connections. Progress is coalesced
    to at most `progress_hz` signals a second (the last one, and one reaching the total,
    always get through): a collection at concurrency 64 reports far faster than a
    screen can show. For the same reason rows that finished fine (`RowDone` with status
    "done") are not forwarded unless `forward_done_rows`; failures always are.
    """

    progressed = Signal(object)  # Progress
    metrics_reported = Signal(object)  # Metrics
    logged = Signal(object)  # Log
    row_finished = Signal(object)  # RowDone
    warned = Signal(object)  # Warning
    job_finished = Signal(object)  # Finished
    job_failed = Signal(object)  # Failed

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        progress_hz: float = PROGRESS_HZ,
        forward_done_rows: bool = False,
    ) -> None:
        super().__init__(parent)
        self.forward_done_rows = forward_done_rows
        self._min_gap = 1.0 / progress_hz
        self._last_progress = 0.0
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:  # the core's Sink protocol
        if isinstance(event, Progress):
            now = time.monotonic()
            with self._lock:
                final = event.total is not None and event.done >= event.total
                if not final and now - self._last_progress < self._min_gap:
                    return
                self._last_progress = now
            self.progressed.emit(event)
        elif isinstance(event, Metrics):
            self.metrics_reported.emit(event)
        elif isinstance(event, RowDone):
            if event.status != "done" or self.forward_done_rows:
                self.row_finished.emit(event)
        elif isinstance(event, WarningEvent):
            self.warned.emit(event)
        elif isinstance(event, Log):
            self.logged.emit(event)
        elif isinstance(event, Finished):
            self.job_finished.emit(event)
        elif isinstance(event, Failed):
            self.job_failed.emit(event)


class JobWorker(QObject):
    """Runs `fn(sink, cancel)` once on the thread it was moved to."""

    succeeded = Signal(object)  # the function's return value
    errored = Signal(object)  # ErrorInfo
    cancelled = Signal(str)  # the reason
    done = Signal()  # always last

    def __init__(self, fn: JobFn, sink: Any, cancel: CancelToken) -> None:
        super().__init__()
        self.fn, self.sink, self.cancel = fn, sink, cancel

    @Slot()
    def run(self) -> None:
        try:
            result = self.fn(self.sink, self.cancel)
        except Cancelled as exc:
            self.cancelled.emit(str(exc) or self.cancel.reason)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the GUI thread
            if self.cancel.cancelled and isinstance(exc, KeyboardInterrupt):
                self.cancelled.emit(self.cancel.reason)
            else:
                self.errored.emit(ErrorInfo.from_exception(exc))
        else:
            if self.cancel.cancelled:
                self.cancelled.emit(self.cancel.reason)
            else:
                self.succeeded.emit(result)
        finally:
            # The thread's connections end with its job: a QThread's job must not leave a
            # workspace open behind the window (docs/design-notes.md).
            workspace.release_thread()
            self.done.emit()


_RUNNING: weakref.WeakSet[Job] = weakref.WeakSet()
_KEEP: set[Job] = set()  # a running job must outlive the panel that dropped its reference


class Job(QObject):
    """One core call in its own QThread, with its QtSink and CancelToken.

    Connect to `sink.*` for the events, and to `succeeded`, `errored`, `cancelled` and
    `ended` (always last, on the GUI thread) for the outcome.
    """

    succeeded = Signal(object)
    errored = Signal(object)
    cancelled = Signal(str)
    ended = Signal()

    def __init__(
        self, name: str, fn: JobFn, *, background: bool = False, progress_hz: float = PROGRESS_HZ
    ) -> None:
        # No Qt parent: a running job keeps itself alive (in _KEEP) until its thread ends,
        # even when the panel that started it goes away.
        super().__init__()
        self.name = name
        self.background = background  # a quick helper (keyring probe): never blocks quitting
        self.sink = QtSink(self, progress_hz=progress_hz)
        self.cancel_token = CancelToken()
        self.thread = QThread()
        self.thread.setObjectName(f"job-{name}")
        self.worker = JobWorker(fn, self.sink, self.cancel_token)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.succeeded.connect(self._on_succeeded)
        self.worker.errored.connect(self._on_errored)
        self.worker.cancelled.connect(self._on_cancelled)
        self.worker.done.connect(self.thread.quit)
        self.thread.finished.connect(self._on_thread_finished)
        self.started_at: float | None = None
        self.outcome: str | None = None  # "succeeded" | "errored" | "cancelled"
        self.result: Any = None
        self.error: ErrorInfo | None = None

    @property
    def running(self) -> bool:
        return self.thread.isRunning()

    def start(self) -> Job:
        self.started_at = time.time()
        _RUNNING.add(self)
        _KEEP.add(self)
        self.thread.start()
        return self

    def stop(self, reason: str = "stopped by the user") -> None:
        """Ask the job to finish its current step or row, save, and return."""
        self.cancel_token.cancel(reason)

    def wait(self, timeout_s: float) -> bool:
        """Wait (processing events, so results still arrive) until the thread ends."""
        timer = QElapsedTimer()
        timer.start()
        while self.thread.isRunning() and timer.elapsed() < timeout_s * 1000:
            QCoreApplication.processEvents()
            self.thread.wait(20)
        QCoreApplication.processEvents()
        return not self.thread.isRunning()

    @Slot(object)
    def _on_succeeded(self, result: Any) -> None:
        self.outcome, self.result = "succeeded", result
        self.succeeded.emit(result)

    @Slot(object)
    def _on_errored(self, info: ErrorInfo) -> None:
        self.outcome, self.error = "errored", info
        self.errored.emit(info)

    @Slot(str)
    def _on_cancelled(self, reason: str) -> None:
        self.outcome = "cancelled"
        self.cancelled.emit(reason)

    @Slot()
    def _on_thread_finished(self) -> None:
        _RUNNING.discard(self)
        self.ended.emit()
        _KEEP.discard(self)


def running_jobs(*, background: bool = True) -> list[Job]:
    """Jobs whose thread still runs; `background=False` leaves out quick helpers."""
    return [
        job
        for job in list(_RUNNING)
        if job.thread.isRunning() and (background or not job.background)
    ]


def stop_all(timeout_s: float = 30.0, reason: str = "the window is closing") -> bool:
    """Cancel every running job and wait (bounded) for them to save and return."""
    jobs = running_jobs()
    for job in jobs:
        job.stop(reason)
    deadline = time.monotonic() + timeout_s
    ok = True
    for job in jobs:
        ok = job.wait(max(0.0, deadline - time.monotonic())) and ok
    return ok
