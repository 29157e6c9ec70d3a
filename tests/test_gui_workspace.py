"""The window and its workspace (issue 12): every connection owned and closed, the CLI beside
the window never corrupts anything, a workspace that cannot be opened never leaves the
person without a window, panels show what other processes write, and switching workspace
starts every panel afresh."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from workspace_support import open_files_under

pytest.importorskip("pytestqt")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd is Linux's"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def studio(qtbot, tmp_path):
    """A window on no workspace yet (as `kdstudio` starts), closed at the end."""
    from support.gui import prepare_app

    from kdstudio.gui import collector, errors, workers
    from kdstudio.gui.main_window import MainWindow

    prepare_app(tmp_path / "settings")
    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    yield win
    workers.stop_all(60)
    win.close()
    errors.uninstall()
    collector.uninstall()


@pytest.fixture
def server():
    from support.openai_server import OpenAIServer

    srv = OpenAIServer(latency=0.01).start()
    yield srv
    srv.stop()


def kdstudio_cli(workspace, *args, input=None):
    return subprocess.run(
        [sys.executable, "-m", "kdstudio", "--workspace", str(workspace), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


def pick_folder(qtbot, win, folder) -> None:
    """File → Open workspace…, choosing `folder` in the dialog as a person would (None:
    look around the folder it opens on, then Cancel)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QFileDialog

    def choose():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            QTimer.singleShot(50, choose)
            return
        qtbot.wait(300)  # let it list the folder it opened on (the open workspace's files)
        if folder is None:
            dialog.reject()
            return
        dialog.setDirectory(str(folder))  # went into it; nothing selected inside
        dialog.accept()

    QTimer.singleShot(50, choose)
    win.open_action.trigger()


def add_teacher(qtbot, teachers, name, url):
    teachers.add_teacher()
    d = teachers.dialog
    d.name.setText(name)
    d.base_url.setText(url)
    d.model.setText("teacher-1")
    d.key_none.setChecked(True)
    d.try_accept()
    qtbot.waitUntil(lambda: name in teachers.ws.teacher_names(), timeout=10_000)
    qtbot.waitUntil(lambda: not teachers.running_jobs(), timeout=10_000)


def wait_idle(qtbot, panel, timeout=30_000):
    qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=timeout)


# -- 1. connections and the corruption ---------------------------------------------


def test_switching_then_using_the_cli_beside_the_window_keeps_the_workspace_sound(
    qtbot, studio, server, tmp_path
):
    """The sequence of issue 12, which ended in "database disk image is malformed"."""
    a, b = tmp_path / "A", tmp_path / "B"
    assert studio.open_workspace(a)
    teachers = studio.show_panel("teachers")
    wait_idle(qtbot, teachers)
    add_teacher(qtbot, teachers, "t1", server.url)
    teachers.select_teacher("t1")
    for _ in range(2):  # probes run in worker threads, each reading A
        teachers.probe_selected()
        wait_idle(qtbot, teachers)
    assert "Probe done" in teachers.message.text

    b.mkdir()  # made in the dialog ("Create New Folder") by a person
    pick_folder(qtbot, studio, b)
    assert studio.ws.root == b.resolve()
    assert open_files_under(a) == []  # no connection to A left, in any thread
    pick_folder(qtbot, studio, a)
    assert studio.ws.root == a.resolve()
    pick_folder(qtbot, studio, None)  # File → Open… again, shows A's files; Cancel

    probe = kdstudio_cli(a, "teacher", "probe", "t1")
    assert probe.returncode == 0, probe.stderr
    assert [f for f in open_files_under(a) if "(deleted)" in f] == []
    assert (a / "kdstudio.sqlite-wal").exists()  # the CLI did not take it as the last user

    teachers = studio.show_panel("teachers")
    wait_idle(qtbot, teachers)
    add_teacher(qtbot, teachers, "t2", server.url)
    assert studio.ws.teacher_names() == ["t1", "t2"]
    assert studio.ws.get_teacher("t1").capabilities["reachable"]  # the CLI's probe, seen

    studio.close()
    assert studio.ws is None and open_files_under(a) == []
    con = sqlite3.connect(a / "kdstudio.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in con.execute("SELECT name FROM teachers ORDER BY name")] == [
            "t1",
            "t2",
        ]
    finally:
        con.close()
    listed = kdstudio_cli(a, "teacher", "list", "--json")
    assert listed.returncode == 0 and [t["name"] for t in json.loads(listed.stdout)] == [
        "t1",
        "t2",
    ]


def test_a_file_dialog_on_an_open_workspace_keeps_its_sqlite_locks(qtbot, studio, tmp_path):
    """Qt's dialog sniffed kdstudio.sqlite-wal/-shm and its close() dropped this process's
    locks: another process then deleted the WAL under the window."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from kdstudio.gui import file_dialogs

    a = tmp_path / "A"
    assert studio.open_workspace(a)
    studio.ws.db.execute("INSERT INTO events(job_kind, job_id, t, type, payload) VALUES"
                         " ('x', 'x', 0, 'Log', '{}')")  # fmt: skip
    QTimer.singleShot(800, lambda: QApplication.activeModalWidget().reject())
    file_dialogs.existing_folder(studio, "Look at the workspace folder", str(a))
    other = kdstudio_cli(a, "teacher", "list")  # opens and closes the database
    assert other.returncode == 0, other.stderr
    assert (a / "kdstudio.sqlite-wal").exists()
    assert [f for f in open_files_under(a) if "(deleted)" in f] == []


def test_switching_asks_before_stopping_a_running_job_and_none_runs_on(
    qtbot, studio, server, tmp_path, monkeypatch
):
    from PySide6.QtWidgets import QMessageBox
    from support.gui import write_prompts

    from kdstudio.collect import CollectConfig
    from kdstudio.config import TeacherConfig
    from kdstudio.data import import_dataset
    from kdstudio.gui import workers

    a = tmp_path / "A"
    assert studio.open_workspace(a)
    import_dataset(studio.ws, write_prompts(tmp_path / "p.jsonl", 40), name="arith")
    studio.ws.add_teacher(TeacherConfig(name="loop", base_url=server.url, model="teacher-1"))
    server.latency = 0.3
    collect = studio.show_panel("collect")
    collect.refresh()
    collect.launch(CollectConfig(teacher="loop", dataset="arith", concurrency=1, max_tokens=8))
    qtbot.waitUntil(lambda: collect.progress.value() >= 1, timeout=20_000)
    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: next(answers))
    assert not studio.open_workspace(tmp_path / "B")  # "No": nothing changes
    assert studio.ws.root == a.resolve() and collect.running()
    job = collect.job
    assert studio.open_workspace(tmp_path / "B")  # "Yes": stopped, then switched
    assert not job.running and job.outcome == "cancelled"
    assert workers.running_jobs(background=False) == [] and open_files_under(a) == []
    con = sqlite3.connect(a / "kdstudio.sqlite")
    status = con.execute("SELECT status FROM collections WHERE name='arith.loop'").fetchone()
    con.close()
    assert status[0] == "cancelled"


# -- 1. a workspace that cannot be opened ------------------------------------------------------


def test_a_damaged_workspace_opens_the_window_with_recovery_offered(qtbot, studio, tmp_path):
    from kdstudio.config import TeacherConfig
    from kdstudio.workspace import Workspace

    root = tmp_path / "damaged"
    ws = Workspace.open(root)
    ws.add_teacher(TeacherConfig(name="kept", base_url="http://localhost:9/v1", model="m"))
    page = ws.query_one("SELECT rootpage FROM sqlite_master WHERE name='teachers'")[0]
    ws.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ws.close()
    with open(root / "kdstudio.sqlite", "r+b") as f:  # the teachers table's page: noise
        f.seek((page - 1) * 4096)
        f.write(os.urandom(4096))

    assert not studio.open_workspace(root)  # its first read finds the damage
    problem = studio.problem
    assert studio.stack.currentWidget() is problem and studio.isVisible()
    assert problem.reason == "damaged" and problem.recover_button.isVisible()
    assert problem.open_button.isVisible() and problem.create_button.isVisible()
    assert open_files_under(root) == []
    job = studio.recover(root, ask=False)
    with qtbot.waitSignal(job.ended, timeout=60_000):
        pass
    assert studio.ws is not None and studio.ws.root == root.resolve(), problem.status.text
    assert studio.stack.currentWidget() is studio.tabs
    assert "Workspace recovered" in studio.message.text
    assert studio.ws.integrity_check() == "ok"
    assert list(root.glob("kdstudio.damaged-*.sqlite"))


def test_a_workspace_that_is_not_a_database_or_is_locked_says_so_and_offers_a_way_out(
    qtbot, studio, tmp_path, monkeypatch
):
    from kdstudio.gui import main_window
    from kdstudio.workspace import Workspace

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "kdstudio.sqlite").write_bytes(b"not sqlite at all " * 500)
    assert not studio.open_workspace(garbage)
    assert studio.problem.reason == "damaged" and "is damaged" in studio.problem.text.text()

    Workspace.open(tmp_path / "locked").close()
    holder = sqlite3.connect(tmp_path / "locked" / "kdstudio.sqlite", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(main_window, "OPEN_TIMEOUT_S", 0.2)
    assert not studio.open_workspace(tmp_path / "locked")
    assert studio.problem.reason == "locked" and studio.problem.retry_button.isVisible()
    assert not studio.problem.recover_button.isVisible()
    holder.execute("COMMIT")
    holder.close()
    studio.problem.retry_button.click()
    assert studio.ws is not None and studio.stack.currentWidget() is studio.tabs

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert not studio.open_workspace(a_file)  # the open one stays; the message says why
    assert studio.ws.root == (tmp_path / "locked").resolve()
    assert "is a file" in studio.message.text and studio.message.level == "error"


def test_a_missing_recent_workspace_is_said_missing_not_made_again_empty(qtbot, studio, tmp_path):
    gone = tmp_path / "gone"
    assert not studio.open_workspace(gone, create=False)  # as File → Recent workspaces does
    assert studio.problem.reason == "missing" and "does not exist" in studio.problem.text.text()
    assert not gone.exists()
    studio.problem.retry_button.click()  # still gone: still not made
    assert not gone.exists() and studio.ws is None
    gone.mkdir()  # the disk is back
    studio.problem.retry_button.click()
    assert studio.ws is not None and studio.ws.root == gone.resolve()


def test_the_app_opens_on_a_damaged_last_workspace_with_a_window(qtbot, tmp_path, monkeypatch):
    """`kdstudio` itself: run_app shows the problem page rather than dying."""
    from PySide6.QtWidgets import QApplication
    from support.gui import prepare_app

    from kdstudio.gui import app as gui_app
    from kdstudio.gui import collector, errors

    prepare_app(tmp_path / "settings")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "kdstudio.sqlite").write_bytes(b"garbage" * 1000)
    shown = []
    monkeypatch.setattr(QApplication, "exec", lambda self: shown.append(self) or 0)
    assert gui_app.run_app(bad) == 0
    window = next(
        w for w in QApplication.topLevelWidgets() if hasattr(w, "problem") and w.isVisible()
    )
    try:
        assert window.isVisible() and window.stack.currentWidget() is window.problem
        assert window.problem.reason == "damaged"
    finally:
        window.close()
        errors.uninstall()
        collector.uninstall()


# -- 3. live panels ----------------------------------------------------------------------------


def test_what_the_cli_writes_appears_in_the_panel_on_screen_within_a_second(
    qtbot, studio, server, tmp_path
):
    from support.gui import write_prompts

    a = tmp_path / "A"
    assert studio.open_workspace(a)
    datasets = studio.show_panel("datasets")
    prompts = write_prompts(tmp_path / "p.jsonl", 30)
    out = kdstudio_cli(a, "data", "import", str(prompts), "--name", "from-cli")
    assert out.returncode == 0, out.stderr
    t0 = time.monotonic()
    qtbot.waitUntil(lambda: datasets.dataset == "from-cli", timeout=1500)
    assert time.monotonic() - t0 < 1.5

    teachers = studio.show_panel("teachers")
    out = kdstudio_cli(
        a, "teacher", "add", "cli-t", "--base-url", server.url, "--model", "teacher-1"
    )
    assert out.returncode == 0, out.stderr
    qtbot.waitUntil(lambda: [t.name for t in teachers.teachers()] == ["cli-t"], timeout=1500)

    outputs = studio.show_panel("outputs")
    server.latency = 0.1
    collecting = subprocess.Popen(
        [sys.executable, "-m", "kdstudio", "--workspace", str(a), "collect", "--teacher",
         "cli-t", "--dataset", "from-cli", "--concurrency", "1", "--max-tokens", "8"],
        env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def done_shown():
        return sum(1 for item in outputs.model.rows if item.status == "done")

    try:
        qtbot.waitUntil(lambda: outputs.collection == "from-cli.cli-t", timeout=60_000)
        qtbot.waitUntil(lambda: 0 < done_shown() < 30, timeout=60_000)  # rows come in live
        outputs.state.setCurrentText("done")  # a filter the person chose stays
        outputs.apply_filter()
        qtbot.waitUntil(lambda: outputs.model.total >= 1, timeout=5000)
        outputs.table.selectRow(0)
        chosen = outputs.selected_items()[0]
        qtbot.waitUntil(lambda: collecting.poll() is not None, timeout=120_000)
        qtbot.waitUntil(lambda: outputs.model.total == 30, timeout=5000)
    finally:
        collecting.kill() if collecting.poll() is None else None
    assert collecting.returncode == 0
    assert outputs.state.currentText() == "done"
    assert [(i.row_id, i.sample) for i in outputs.selected_items()] == [
        (chosen.row_id, chosen.sample)
    ]


def test_the_demo_beside_the_window_shows_its_step_progress_and_result(
    qtbot, studio, tmp_path, monkeypatch
):
    from kdstudio import demo
    from kdstudio.demo import DEMO_FOLDER, STATUS_FILE
    from kdstudio.events import Log, Progress

    root = tmp_path / "demo"
    assert studio.open_workspace(root)
    banner = studio.demo_banner
    assert not banner.isVisible()
    from kdstudio.demo import _StatusFile

    (root / DEMO_FOLDER).mkdir()
    monkeypatch.setattr(demo, "STATUS_EVERY_S", 0.0)  # every progress, not one a second
    status = _StatusFile(root / DEMO_FOLDER / STATUS_FILE)  # as `kdstudio demo` writes it
    status.emit(Log("[4/6] collecting the teacher's answers with logprobs"))
    status.emit(Progress(12, 48, "request"))
    qtbot.waitUntil(lambda: banner.isVisible() and banner.bar.value() == 12, timeout=2500)
    assert "Demo running" in banner.label.text() and "[4/6] collecting" in banner.label.text()
    assert banner.bar.maximum() == 48 and banner.bar.format() == "12 / 48 requests"
    results = {
        "seconds": 95.0,
        "scores": [
            {"model": "teacher", "accuracy": 0.9},
            {"model": "before", "accuracy": 0.0},
            {"model": "after", "accuracy": 0.7},
        ],
    }
    (root / DEMO_FOLDER / "results.json").write_text(json.dumps(results))
    status.end("complete", "")
    qtbot.waitUntil(lambda: "Demo complete" in banner.label.text(), timeout=2500)
    assert "teacher 90%" in banner.label.text() and "70% after distillation" in banner.label.text()
    assert banner.result_button.isVisible() and not banner.bar.isVisible()


# -- 3. switching clears every panel -----------------------------------------------------------


def test_switching_workspace_starts_every_panel_afresh(qtbot, studio, tmp_path):
    from kdstudio.config import TeacherConfig

    a, b = tmp_path / "A", tmp_path / "B"
    assert studio.open_workspace(a)
    studio.ws.add_teacher(TeacherConfig(name="only-in-a", base_url="http://x:1/v1", model="m"))
    collect, train = studio.panels["collect"], studio.panels["train"]
    collect.refresh()
    collect.main_form.set_values({"concurrency": 3, "max_tokens": 99})
    collect.rate_label.setText("12.0 requests/s · ETA 00:40")
    studio.panels["outputs"].search.setText("needle")
    studio.panels["datasets"].search.setText("needle")
    train.forms["optim"].set_values({"lr": 0.5})
    train.board.add_metrics(1, {"loss": 2.0})
    train.board.flush()
    train.progress_label.setText("Run x: step 3 of 9 · ETA 00:10")
    assert train.board.point_count("loss") == 1
    old = dict(studio.panels)

    assert studio.open_workspace(b)
    assert all(studio.panels[k] is not old[k] for k in old)
    collect, train = studio.panels["collect"], studio.panels["train"]
    assert (
        collect.main_form.value("concurrency") == 8 and collect.main_form.value("max_tokens") == 512
    )
    assert collect.teacher_box.count() == 0 and collect.rate_label.text() == ""
    assert studio.panels["outputs"].search.text() == "" == studio.panels["datasets"].search.text()
    assert train.forms["optim"].value("lr") != 0.5
    assert train.board.point_count("loss") == 0 and train.progress_label.text() == "No run yet."
    assert [p.ws for p in studio.panels.values()] == [studio.ws] * len(studio.panels)
