"""The window opens on a workspace, remembers it, and routes worker events to the GUI thread."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings")


def test_window_opens_every_panel_on_the_workspace(window, ws):
    assert "teachers" in window.panels
    assert str(ws.root) in window.workspace_label.text()
    for key, panel in window.panels.items():
        assert window.show_panel(key) is panel
        assert panel.ws is ws


def test_window_remembers_the_last_workspace_and_recent_list(window, ws, tmp_path):
    from kdstudio.gui import settings
    from kdstudio.gui.app import resolve_workspace

    assert settings.last_workspace() == str(ws.root)
    other = tmp_path / "other"
    assert window.open_workspace(other)
    assert settings.recent("workspaces")[:2] == [str(other.resolve()), str(ws.root)]
    assert (
        resolve_workspace(None) == other.resolve()
        or "KDSTUDIO_WORKSPACE" in __import__("os").environ
    )


def test_open_workspace_written_by_newer_version_is_an_inline_message(window, tmp_path):
    from kdstudio.workspace import Workspace

    newer = tmp_path / "newer"
    w = Workspace.open(newer)
    w.db.execute("PRAGMA user_version=999")
    w.close()
    assert not window.open_workspace(newer)
    assert window.message.isVisible()
    assert "newer kdstudio" in window.message.text


def test_qtsink_events_from_a_worker_thread_reach_gui_slots(qtbot):
    from PySide6.QtCore import QObject, QThread, Slot

    from kdstudio.events import Failed, Finished, Log, Metrics, Progress, RowDone, Warning
    from kdstudio.gui.workers import QtSink

    class Receiver(QObject):
        def __init__(self):
            super().__init__()
            self.got = []

        @Slot(object)
        def on_event(self, event):
            self.got.append((type(event).__name__, QThread.currentThread() is self.thread()))

    sink = QtSink()
    receiver = Receiver()
    for signal in (
        sink.progressed,
        sink.metrics_reported,
        sink.logged,
        sink.row_finished,
        sink.warned,
        sink.job_finished,
        sink.job_failed,
    ):
        signal.connect(receiver.on_event)
    events = [
        Progress(1, 2),
        Metrics(1, {"loss": 1.0}),
        Log("hi"),
        RowDone(3, "failed", "timeout"),
        Warning("careful"),
        Finished("ok"),
        Failed("bad"),
    ]
    worker = threading.Thread(target=lambda: [sink.emit(e) for e in events])
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: len(receiver.got) == len(events), timeout=3000)
    assert [name for name, _ in receiver.got] == [type(e).__name__ for e in events]
    assert all(on_gui_thread for _, on_gui_thread in receiver.got)


def test_qtsink_coalesces_progress_but_always_delivers_the_final_one(qtbot):
    from PySide6.QtCore import QObject, Slot

    from kdstudio.events import Progress
    from kdstudio.gui.workers import QtSink

    class Receiver(QObject):
        def __init__(self):
            super().__init__()
            self.done = []

        @Slot(object)
        def on_progress(self, event):
            self.done.append(event.done)

    sink = QtSink(progress_hz=20)
    receiver = Receiver()
    sink.progressed.connect(receiver.on_progress)
    worker = threading.Thread(target=lambda: [sink.emit(Progress(i, 5000)) for i in range(1, 5001)])
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: bool(receiver.done) and receiver.done[-1] == 5000, timeout=3000)
    assert len(receiver.done) < 100


def test_job_runs_off_the_gui_thread_and_reports_its_result(qtbot):
    from kdstudio.gui.workers import Job

    seen = {}

    def fn(sink, cancel):
        seen["thread"] = threading.current_thread()
        return 42

    job = Job("answer", fn)
    with qtbot.waitSignal(job.succeeded, timeout=3000) as blocker:
        job.start()
    assert blocker.args == [42]
    assert seen["thread"] is not threading.main_thread()
    qtbot.waitUntil(lambda: not job.running, timeout=3000)


def test_garbage_made_in_a_job_is_collected_on_the_gui_thread_only(qtbot, tmp_path):
    """A collection in a worker thread can free a Qt object's wrapper there and deadlock
    the window (PySide6 needs the GIL under Qt's connection lock); the studio collects on
    its GUI thread instead."""
    import gc
    import time

    from support.gui import prepare_app

    from kdstudio.gui import collector
    from kdstudio.gui.workers import Job

    prepare_app(tmp_path / "settings")
    assert collector.installed() is not None and not gc.isenabled()
    freed: list[int] = []  # the thread each object was freed on

    class Node:
        def __init__(self):
            self.me = self  # a cycle: only the cyclic collector frees it

        def __del__(self):
            freed.append(threading.get_ident())

    def fn(sink, cancel):
        for _ in range(20):  # 40k objects, paced as a job makes them: far past gen 0's 700
            for _ in range(2000):
                Node()
            time.sleep(0.01)
        return threading.get_ident()

    job = Job("garbage", fn)
    with qtbot.waitSignal(job.succeeded, timeout=30_000) as blocker:
        job.start()
    worker = blocker.args[0]
    # A full collection is followed by a freeze, and objects the job made in between are
    # frozen with the survivors (more often on a busy machine): the deep collection frees
    # them, on the GUI thread too, once no job runs. Make it due now.
    collector.installed().last_deep = 0.0
    qtbot.waitUntil(lambda: len(freed) == 40_000, timeout=10_000)
    assert set(freed) == {threading.main_thread().ident} and worker not in freed
    collector.uninstall()
    assert gc.isenabled()


def test_a_burst_of_new_objects_is_frozen_then_freed_by_a_deep_collection_when_idle(
    qtbot, tmp_path, monkeypatch
):
    import gc

    from support.gui import prepare_app

    from kdstudio.gui import collector

    prepare_app(tmp_path / "settings")
    gc_collector = collector.installed()
    freed: list[int] = []

    class Node:
        def __init__(self):
            self.me = self

        def __del__(self):
            freed.append(1)

    burst = [Node() for _ in range(collector.FREEZE_YOUNG + 1000)]
    del burst  # garbage now, but one look at it all would stall the window
    gc_collector.check()
    assert gc_collector.frozen == 1 and gc.get_freeze_count() > collector.FREEZE_YOUNG
    assert not freed
    monkeypatch.setattr(collector, "DEEP_EVERY_S", 0.0)
    gc_collector.check()  # no job runs: thaw everything and collect it all
    assert len(freed) == collector.FREEZE_YOUNG + 1000


def test_job_stop_cancels_cleanly_and_reports_cancelled(qtbot):
    from kdstudio.gui.workers import Job

    def fn(sink, cancel):
        while not cancel.wait(0.01):
            pass
        cancel.raise_if_cancelled()

    job = Job("loop", fn)
    job.start()
    with qtbot.waitSignal(job.cancelled, timeout=3000) as blocker:
        job.stop("enough")
    assert blocker.args == ["enough"]
    assert job.wait(3)


def test_unexpected_worker_exception_opens_the_error_dialog_with_details(qtbot, window):
    from PySide6.QtWidgets import QApplication

    from kdstudio.gui.widgets import ErrorDialog

    panel = window.panels["teachers"]

    def boom(sink, cancel):
        raise RuntimeError("disk on fire")

    job = panel.start_job("boom", boom)
    with qtbot.waitSignal(job.errored, timeout=3000):
        job.start()

    def dialog():
        found = [w for w in QApplication.topLevelWidgets() if isinstance(w, ErrorDialog)]
        return found[0] if found and found[0].isVisible() else None

    qtbot.waitUntil(lambda: dialog() is not None, timeout=3000)
    d = dialog()
    assert "disk on fire" in d.details and "Traceback" in d.details
    d.copy_details()
    assert "disk on fire" in QApplication.clipboard().text()
    d.close()


def test_expected_worker_error_is_shown_inline_not_in_a_dialog(qtbot, window):
    from PySide6.QtWidgets import QApplication

    from kdstudio.errors import UserError
    from kdstudio.gui.widgets import ErrorDialog

    panel = window.panels["teachers"]

    def bad(sink, cancel):
        raise UserError("dataset has 0 rows")

    job = panel.start_job("bad", bad)
    with qtbot.waitSignal(job.errored, timeout=3000):
        job.start()
    assert panel.message.isVisible() and "0 rows" in panel.message.text
    assert not [
        w for w in QApplication.topLevelWidgets() if isinstance(w, ErrorDialog) and w.isVisible()
    ]


def test_closing_with_a_running_job_asks_then_stops_it_within_the_bound(qtbot, window, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    panel = window.panels["teachers"]
    saved = []

    def fn(sink, cancel):
        while not cancel.wait(0.01):
            pass
        saved.append("checkpoint")  # what a core job does on cancel: finish, save, return

    job = panel.start_job("long job", fn)
    job.start()
    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: next(answers))
    window.close()
    assert window.isVisible() and job.running  # "No": nothing stopped
    window.close()
    assert not window.isVisible()
    assert not job.running and saved == ["checkpoint"]


def test_plot_keeps_every_peak_of_a_million_points_while_drawing_few(qtbot):
    import numpy as np

    from kdstudio.gui.plots import MAX_DRAWN, MetricPlot

    plot = MetricPlot("loss")
    qtbot.addWidget(plot)
    plot.show()  # a hidden plot draws nothing
    plot.ensure_series("k", "loss", "#4c8bf5")
    xs = np.arange(1_000_000, dtype=float)
    ys = np.zeros_like(xs)
    ys[123_457] = 9.0  # one spike
    plot.extend("k", xs, ys)
    plot.refresh()
    curve = plot.series["k"].curve
    assert plot.point_count() == 1_000_000
    assert len(curve.xData) <= 2 * MAX_DRAWN + 4096
    assert curve.yData.max() == 9.0 and curve.xData.max() >= 999_000  # the whole run, spike kept
    plot.getPlotItem().getViewBox().setXRange(123_000, 124_000, padding=0)
    plot.refresh()
    assert 1000 <= len(curve.xData) <= 1010  # zoomed in: every point


def test_an_empty_plot_shows_no_made_up_tick_values(qtbot):
    from kdstudio.gui.plots import MetricPlot

    plot = MetricPlot("GPU memory")
    qtbot.addWidget(plot)
    plot.show()
    left = plot.getPlotItem().getAxis("left")
    assert plot.empty.isVisible() and not left.style["showValues"]
    plot.ensure_series("k", "GiB", "#4c8bf5")
    plot.append("k", 1.0, 2.0)
    plot.refresh()
    assert not plot.empty.isVisible() and left.style["showValues"]
    plot.clear_series()
    assert plot.empty.isVisible() and not left.style["showValues"]


def test_an_exception_in_a_plain_background_thread_reaches_the_error_dialog(qtbot, window):
    from PySide6.QtWidgets import QApplication

    from kdstudio.gui.widgets import ErrorDialog

    def boom():
        raise ValueError("checksum mismatch in a helper thread")

    thread = threading.Thread(target=boom, name="helper")
    thread.start()
    thread.join()

    def dialog():
        found = [
            w
            for w in QApplication.topLevelWidgets()
            if isinstance(w, ErrorDialog) and w.isVisible()
        ]
        return found[0] if found else None

    qtbot.waitUntil(lambda: dialog() is not None, timeout=3000)
    assert (
        "checksum mismatch" in dialog().details
        and "helper" in dialog().windowTitle() + dialog().details
    )
    dialog().close()


def test_plot_x_range_follows_a_growing_run_in_steps_until_the_user_zooms(qtbot):
    import numpy as np

    from kdstudio.gui.plots import MetricPlot

    plot = MetricPlot("loss")
    qtbot.addWidget(plot)
    plot.show()  # a hidden plot draws nothing
    plot.show()
    qtbot.waitExposed(plot)
    plot.ensure_series("k", "loss", "#4c8bf5")
    vb = plot.getPlotItem().getViewBox()
    changes = []
    vb.sigXRangeChanged.connect(lambda *_: changes.append(tuple(vb.viewRange()[0])))
    plot.extend("k", np.arange(1000.0), np.zeros(1000))
    plot.refresh()
    x0, x1 = vb.viewRange()[0]
    assert x0 <= 0 and 999 <= x1 < 1100  # a stored run: fitted to the data
    for start in range(1000, 1500, 10):  # growing 10 points a frame
        plot.extend("k", np.arange(start, start + 10.0), np.zeros(10))
        plot.refresh()
        assert vb.viewRange()[0][1] >= start + 9  # the newest point is always in view
    assert 1 <= len(changes) <= 6  # extended by a tenth at a time, not on every frame
    vb.setXRange(200, 300, padding=0)  # the user zooms: the view stays put
    plot.extend("k", np.arange(1500, 1600.0), np.zeros(100))
    plot.refresh()
    assert vb.viewRange()[0] == [200, 300] and len(plot.series["k"].curve.xData) <= 110
    vb.enableAutoRange()  # the "A" button: follow again
    plot.refresh()
    assert vb.viewRange()[0][1] >= 1599
    plot.extend("k", np.arange(1600, 1610.0), np.zeros(10))
    plot.refresh()
    assert vb.viewRange()[0][1] >= 1609
