"""Python's cyclic garbage collector, run only on the GUI thread.

With automatic collection, a collection can start in whichever thread happens to allocate:
often a job's worker thread. If it frees the Python wrapper of a Qt object there, the Qt
destructor runs in the worker; PySide6 then needs the GIL while it holds the object's
connection lock, and a GUI thread deleting a related object (holding the GIL, waiting for
that lock) deadlocks the window. (Seen here: a gen-0 collection in a collection job's
thread, while the GUI thread deleted the widgets of a closed window.)

So the studio turns automatic collection off and collects on a GUI-thread timer instead,
generation by generation with Python's own thresholds (pyqtgraph's GarbageCollector does the
same). Four things keep each tick short (no visible stall) while a job runs:
- while objects are made fast (more than BUSY_YOUNG new ones at a tick), the timer ticks
  every BUSY_INTERVAL_MS, so each collection looks at a few thousand objects;
- a burst of more than FREEZE_YOUNG new objects within one idle tick is a job loading
  something (the trainer's set-up makes ~600k in a quarter second: a 0.2 s collection,
  then a 0.2 s one of the next generation), so it is frozen rather than looked at;
  anything in it that does become garbage is freed by the next deep collection;
- survivors of each full collection are frozen (`gc.freeze`), so the next full collection
  looks only at objects made since: with torch and transformers loaded, a full look at
  everything costs ~0.2 s of GUI thread (and of the training loop, which waits for the GIL);
- frozen objects are thawed and everything is collected when no job runs, at most once
  every DEEP_EVERY_S, so cycles among long-lived objects (closed dialogs, finished runs'
  models) are freed too.
"""

from __future__ import annotations

import gc
import time

from PySide6.QtCore import QObject, QTimer, Slot

INTERVAL_MS = 250
BUSY_INTERVAL_MS = 20
BUSY_YOUNG = 10_000
FREEZE_YOUNG = 100_000
DEEP_EVERY_S = 300.0


class MainThreadCollector(QObject):
    """Owns collection for the process while installed; `uninstall()` gives it back."""

    def __init__(self, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__()
        self.threshold = gc.get_threshold()
        self.last_deep = time.monotonic()
        self.collections = [0, 0, 0]  # how many of each generation this collector ran
        self.frozen = 0  # bursts frozen instead of collected
        self.interval_ms = interval_ms
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)

    def start(self) -> None:
        gc.disable()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        gc.unfreeze()
        gc.collect()
        gc.enable()

    @Slot()
    def check(self) -> None:
        now = time.monotonic()
        if now - self.last_deep >= DEEP_EVERY_S and not _jobs_running():
            self.last_deep = now
            gc.unfreeze()
            self._collect(2)
            gc.freeze()
            return
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.threshold
        busy = c0 > BUSY_YOUNG
        self.timer.setInterval(BUSY_INTERVAL_MS if busy else self.interval_ms)
        if c0 <= t0:
            return
        if c0 > FREEZE_YOUNG:
            gc.freeze()
            self.frozen += 1
            return
        if c1 <= t1:
            self._collect(0)
        elif c2 <= t2:
            self._collect(1)
        else:
            self._collect(2)
            gc.freeze()  # what survived a full collection is looked at again only when deep

    def _collect(self, generation: int) -> None:
        gc.collect(generation)
        self.collections[generation] += 1


def _jobs_running() -> bool:
    from kdstudio.gui import workers

    return bool(workers.running_jobs())


_collector: MainThreadCollector | None = None


def install() -> MainThreadCollector:
    """Collect only on the GUI thread from now on (idempotent). Needs a QApplication."""
    global _collector
    if _collector is None:
        _collector = MainThreadCollector()
        _collector.start()
    return _collector


def uninstall() -> None:
    """Collect everything now, on this thread, and give collection back to Python."""
    global _collector
    if _collector is not None:
        _collector.stop()
        _collector.deleteLater()
        _collector = None


def installed() -> MainThreadCollector | None:
    return _collector
