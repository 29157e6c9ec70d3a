"""Each panel's main flow against the real core: import, browse, collect, review, train, runs."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

KEY_ENV = "KDSTUDIO_GUI_TEST_KEY"


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1200, 800))


@pytest.fixture
def prompts(tmp_path):
    from support.gui import write_prompts

    return write_prompts(tmp_path / "prompts.jsonl", 30)


@pytest.fixture
def server():
    from support.gui import loopback_server

    yield from loopback_server(KEY_ENV, latency=0.005)


def wait_idle(qtbot, panel, timeout=60_000):
    qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=timeout)


# -- datasets ---------------------------------------------------------------------------------


def test_import_dialog_previews_rows_as_parsed_and_imports_into_the_table(
    qtbot, window, ws, prompts
):
    panel = window.show_panel("datasets")
    panel.import_files([str(prompts)])
    dialog = panel.importer
    assert dialog.model.rowCount() == 20
    assert dialog.model.row(0).prompt == "What is 1 + 2?"
    assert dialog.model.row(0).reference == "The answer is 3."
    assert "prompt ← 'prompt'" in dialog.detected.text()
    dialog.name.setText("arith")
    with qtbot.waitSignal(dialog.imported, timeout=20_000):
        dialog.start_import()
    assert panel.dataset == "arith"
    assert panel.model.total == 30 and panel.model.rowCount() == 30
    assert panel.model.row(1).prompt.startswith("Reverse the string")
    assert "Imported 30 rows" in panel.message.text


def test_import_mapping_override_changes_the_preview_and_a_bad_column_is_inline(
    qtbot, window, tmp_path
):
    path = tmp_path / "qa.csv"
    path.write_text(
        "question,answer,notes\nhi there,hello,x\nwhat now,nothing,y\n", encoding="utf-8"
    )
    panel = window.show_panel("datasets")
    panel.import_files([str(path)])
    dialog = panel.importer
    assert dialog.model.row(0).prompt == "hi there"
    dialog.map_boxes["prompt"].setCurrentText("notes")
    dialog.update_preview()
    assert dialog.model.row(0).prompt == "x"
    dialog.map_boxes["messages"].setCurrentText("answer")
    dialog.update_preview()
    assert dialog.message.isVisible() and dialog.message.level == "error"
    assert not dialog.import_button.isEnabled()


def test_dataset_table_is_lazy_and_search_filters_it(qtbot, window, ws, tmp_path):
    from kdstudio.data import import_dataset

    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        for i in range(5000):
            f.write(
                json.dumps({"prompt": f"row {i} {'zebra' if i % 100 == 0 else 'plain'}"}) + "\n"
            )
    import_dataset(ws, path, name="big")
    panel = window.show_panel("datasets")
    panel.refresh()
    panel.select_dataset("big")
    assert panel.model.total == 5000
    assert panel.model.rowCount() == panel.model.page_size < 5000  # one page, not 5000 rows
    panel.table.scrollToBottom()
    qtbot.waitUntil(lambda: panel.model.rowCount() > panel.model.page_size, timeout=3000)
    panel.search.setText("zebra")
    panel.apply_search()
    assert panel.model.total == 50 and panel.model.rowCount() == 50
    assert all("zebra" in r.prompt for r in panel.model.rows)


def test_dropping_a_file_on_the_window_opens_the_import_step(qtbot, window, prompts):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(prompts))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    panel = window.panels["datasets"]
    assert window.tabs.currentWidget() is panel
    assert panel.importer is not None and panel.importer.path == prompts


# -- collect + outputs ------------------------------------------------------------------------


def _teacher(ws, server):
    from kdstudio.config import TeacherConfig

    ws.add_teacher(
        TeacherConfig(
            name="loop",
            base_url=server.url,
            model="teacher-1",
            key_source="env",
            key_env=KEY_ENV,
            price_in=1.0,
            price_out=2.0,
        ),
        replace=True,
    )


def test_collect_estimates_then_runs_to_100_percent_with_failures_listed(
    qtbot, window, ws, prompts, server
):
    from kdstudio.data import import_dataset

    import_dataset(ws, prompts, name="arith")
    _teacher(ws, server)
    server.add_fault("400", times=2, message="context too long")
    panel = window.show_panel("collect")
    panel.refresh()
    panel.teacher_box.setCurrentText("loop")
    panel.dataset_box.setCurrentText("arith")
    panel.main_form.set_values(
        {"top_logprobs": 3, "concurrency": 8, "budget": 1.0, "max_tokens": 16}
    )
    panel.start()  # estimate first
    wait_idle(qtbot, panel)
    assert panel.estimate is not None and panel.estimate.requests == 30
    assert "30 requests" in panel.estimate_label.text()
    assert panel.message.text.startswith("Ready") and panel._confirm_pending
    panel.on_message_action()
    qtbot.waitUntil(lambda: not panel.running(), timeout=60_000)
    qtbot.waitUntil(lambda: panel.progress.value() == panel.progress.maximum() == 30, timeout=5000)
    assert panel.failures.rowCount() == 2
    assert "context too long" in panel.failures.row(0).detail
    qtbot.waitUntil(lambda: panel.state_labels["done"].text() == "done: 28", timeout=5000)
    spend = panel.spend_label.text()
    assert spend.startswith("Spent so far on this collection: $") and "budget" in spend


def test_pause_then_resume_keeps_the_settings_and_every_unfinished_collection_is_listed(
    qtbot, window, ws, prompts, server
):
    """Issue 12: after Pause, Resume went from concurrency 2 to the default 8, and only the
    first interrupted collection was named ("and 1 more")."""
    from kdstudio.collect import store as outputs
    from kdstudio.collect.config import CollectConfig
    from kdstudio.collect.ledger import Collection
    from kdstudio.data import import_dataset
    from kdstudio.resume import collect_settings

    import_dataset(ws, prompts, name="arith")
    _teacher(ws, server)
    other = Collection(CollectConfig(teacher="loop", dataset="arith", name="second"), ws)
    other.open()  # started elsewhere and interrupted before any answer
    ws.db.execute(  # as a Ctrl-C'd collector leaves it
        "UPDATE collections SET status='cancelled', message='stopped by Ctrl-C' WHERE name=?",
        ("second",),
    )
    server.latency = 0.2
    panel = window.show_panel("collect")
    panel.refresh()
    config = CollectConfig(teacher="loop", dataset="arith", concurrency=2, max_tokens=8)
    job = panel.launch(config)
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=20_000)
    panel.pause()
    qtbot.waitUntil(lambda: not job.running, timeout=20_000)
    assert 0 < outputs.collection_status_counts(ws, "arith.loop")["done"] < 30
    assert panel.message.text.startswith("Paused") and "--" not in panel.message.text
    panel.on_message_action()  # Resume
    job = panel.job
    assert job is not None and job.running and panel.config.concurrency == 2
    qtbot.waitUntil(lambda: panel.progress.value() >= 6, timeout=20_000)
    panel.pause()
    qtbot.waitUntil(lambda: not job.running, timeout=20_000)
    assert collect_settings(ws, "arith.loop").concurrency == 2

    # as when the workspace is opened again: every unfinished collection, by name
    panel.main_form.set_values({"concurrency": 8})
    panel.refresh()
    listed = [panel.unfinished_box.itemData(i) for i in range(panel.unfinished_box.count())]
    assert sorted(listed) == ["arith.loop", "second"]
    assert "more" not in panel.unfinished_label.text()
    panel.unfinished_box.setCurrentIndex(listed.index("arith.loop"))
    server.latency = 0.0
    panel.resume_selected()  # fills the form from the stored settings, estimates
    assert panel.main_form.value("concurrency") == 2 and panel.main_form.value("max_tokens") == 8
    wait_idle(qtbot, panel)
    assert panel.estimate is not None and 0 < panel.estimate.requests < 30
    job = panel.start()
    assert job is not None
    qtbot.waitUntil(lambda: not panel.running(), timeout=60_000)
    assert outputs.collection_status_counts(ws, "arith.loop")["done"] == 30
    assert collect_settings(ws, "arith.loop").concurrency == 2
    qtbot.waitUntil(  # once the job has ended (its `ended` arrives after the thread stops)
        lambda: (
            [panel.unfinished_box.itemData(i) for i in range(panel.unfinished_box.count())]
            == ["second"]
        ),
        timeout=5000,
    )


def test_changed_settings_for_an_existing_collection_are_shown_before_start(
    qtbot, window, ws, prompts, server
):
    from kdstudio.collect import CollectConfig, collect
    from kdstudio.data import import_dataset

    import_dataset(ws, prompts, name="arith")
    _teacher(ws, server)
    collect(CollectConfig(teacher="loop", dataset="arith", max_tokens=8, limit=5), ws)
    panel = window.show_panel("collect")
    panel.refresh()
    panel.teacher_box.setCurrentText("loop")
    panel.dataset_box.setCurrentText("arith")
    panel.main_form.set_values({"max_tokens": 12})
    assert panel.check_conflict() is not None
    assert "max_tokens: 8 -> 12" in panel.message.text and panel.message.level == "warning"
    assert "--name" not in panel.message.text and not panel.start_button.isEnabled()
    assert panel.start() is None and not panel.running_jobs()
    panel.main_form.set_values({"max_tokens": 8})
    assert panel.check_conflict() is None and panel.start_button.isEnabled()
    panel.main_form.set_values({"max_tokens": 12, "name": "arith.longer"})
    assert panel.check_conflict() is None


def test_a_rejected_key_during_collection_is_a_message_with_edit_teacher_not_a_crash(
    qtbot, window, ws, prompts, server, monkeypatch
):
    """Issue 12: a wrong key opened the crash dialog, and the failed collection was then
    offered as "interrupted… Resume" on every visit."""
    from kdstudio.collect import CollectConfig
    from kdstudio.data import import_dataset
    from kdstudio.gui.panels import base

    crashes = []
    monkeypatch.setattr(base, "report_unexpected", lambda *a, **k: crashes.append(a))
    import_dataset(ws, prompts, name="arith")
    _teacher(ws, server)
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key")
    panel = window.show_panel("collect")
    panel.refresh()
    panel.launch(CollectConfig(teacher="loop", dataset="arith", max_tokens=8))
    with qtbot.waitSignal(panel.job.ended, timeout=30_000):
        pass
    text = panel.message.text
    assert crashes == [] and panel.message.level == "error"
    assert "rejected the API key" in text and "Edit teacher" in text
    assert "--" not in text and "kdstudio teacher" not in text
    assert panel.message._action.isVisible() and panel.message._action.text() == "Edit teacher…"
    panel.on_message_action()
    teachers = window.panels["teachers"]
    assert window.tabs.currentWidget() is teachers
    assert teachers.dialog.isVisible() and teachers.dialog.name.text() == "loop"
    teachers.dialog.reject()
    panel = window.show_panel("collect")
    panel.refresh()
    assert panel.unfinished_box.count() == 1
    assert panel.unfinished_box.itemText(0) == "arith.loop — failed"
    assert "failed" in panel.unfinished_label.text()
    assert "interrupted" not in panel.unfinished_label.text()
    assert panel.resume_button.text() == "Retry"


def test_outputs_search_review_edit_keeps_the_original_and_colours_tokens(
    qtbot, window, ws, prompts, server, tmp_path
):
    from kdstudio.collect import CollectConfig, collect
    from kdstudio.collect import store as outputs
    from kdstudio.data import import_dataset

    import_dataset(ws, prompts, name="arith")
    _teacher(ws, server)
    collect(CollectConfig(teacher="loop", dataset="arith", top_logprobs=3, max_tokens=12), ws)
    panel = window.show_panel("outputs")
    panel.show_collection("arith.loop")
    assert panel.model.total == 30
    panel.search.setText("Reverse")
    panel.apply_filter()
    assert panel.model.total == 10
    panel.table.selectRow(0)
    item = panel.detail.item
    assert panel.response_view.tl is not None  # coloured by token probability
    assert "p = " in panel.response_view.tooltip_for(0)
    original = item.response
    panel.start_edit()
    panel.editor.setPlainText("An edited answer.")
    panel.save_edit()
    d = outputs.get_item(ws, "arith.loop", item.row_id, item.sample)
    assert d.item.response == "An edited answer." and d.original == original
    assert d.item.review == "accepted"
    panel.table.selectRow(1)
    panel.reject_selected()
    assert outputs.review_counts(ws, "arith.loop")["rejected"] == 1
    panel.table.selectRow(0)
    panel.revert_edit()
    assert outputs.get_item(ws, "arith.loop", item.row_id, item.sample).item.response == original
    panel.table.selectAll()
    n = panel.export_selection(tmp_path / "sel.jsonl")
    lines = (tmp_path / "sel.jsonl").read_text().splitlines()
    assert n == len(lines) == 10
    assert json.loads(lines[0])["messages"][-1]["role"] == "assistant"


# -- teachers probe -----------------------------------------------------------------------------


def test_probe_shows_capabilities_and_a_rejected_key_inline(qtbot, window, ws, server):
    _teacher(ws, server)
    panel = window.show_panel("teachers")
    panel.refresh()
    panel.select_teacher("loop")
    panel.probe_selected()
    wait_idle(qtbot, panel)
    assert "Probe done" in panel.message.text
    assert (
        "logprobs" in panel.model.row(0).capabilities
        and panel.model.row(0).capabilities["logprobs"]
    )
    os.environ[KEY_ENV] = "sk-wrong"
    panel.probe_selected()
    wait_idle(qtbot, panel)
    assert "Authentication failed" in panel.message.text and panel.message.level == "error"
