"""What every panel shares: the message bar, window-wide shortcuts, words and titles."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1440, 900))


# -- the message bar --------------------------------------------------------------------------


def test_each_kind_of_message_has_one_fixed_colour_whatever_came_before(qtbot):
    from kdstudio.gui.widgets import MessageBar

    fresh = {}
    for level in ("info", "success", "warning", "error"):
        bar = MessageBar()
        qtbot.addWidget(bar)
        bar.show_message("first", level)
        fresh[level] = bar.styleSheet()
    assert len(set(fresh.values())) == 4  # four kinds, four colours
    bar = MessageBar()
    qtbot.addWidget(bar)
    bar.show()
    for level in ("success", "error", "warning", "info", "error", "success"):
        bar.show_message(f"now {level}", level)
        assert bar.styleSheet() == fresh[level]  # no tint left from the message before


def test_a_message_appearing_or_going_moves_nothing_in_the_panel(window, qtbot):
    from PySide6.QtCore import QPoint

    panel = window.show_panel("runs")
    qtbot.waitExposed(window)

    def table_top() -> int:
        window.layout().activate()
        panel.layout().activate()
        return panel.table.mapTo(panel, QPoint(0, 0)).y()

    panel.message.clear()
    empty = table_top()
    panel.message.show_message("Evaluation 3 of run x finished on 40 prompts.", "success")
    shown = table_top()
    panel.message.show_message("A much longer message " * 30, "error")
    longer = table_top()
    panel.message.clear()
    assert empty == shown == longer == table_top()


def test_a_long_message_is_elided_and_whole_in_its_tooltip(qtbot):
    from kdstudio.gui.widgets import MessageBar

    bar = MessageBar()
    qtbot.addWidget(bar)
    bar.resize(400, bar.height())
    bar.show()
    text = "The keyring did not answer within 5 s; unlock it or use an environment variable. " * 8
    bar.show_message(text, "warning")
    shown = bar._label.text()
    assert bar.text == text and shown.endswith("…") and len(shown) < len(text)
    assert bar._label.toolTip() == text
    bar.show_message("Short.", "info")
    assert bar._label.text() == "Short." and bar._label.toolTip() == ""


def test_the_windows_own_message_floats_over_the_tabs_without_moving_them(window, qtbot):
    qtbot.waitExposed(window)
    top = window.tabs.geometry().top()
    window.message.show_message("Could not open the workspace: gone", "error", action="Open…")
    assert window.message.isVisible() and window.tabs.geometry().top() == top
    window.message.clear()
    assert not window.message.isVisible()


# -- shortcuts ---------------------------------------------------------------------------------


def press(window, qtbot, widget, key, modifier):
    from PySide6.QtWidgets import QApplication
    from support.gui import key_chord

    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=3000)
    widget.setFocus()
    key_chord(qtbot, widget, key, modifier)


def test_ctrl_n_adds_a_teacher_from_any_panel(window, qtbot):
    from PySide6.QtCore import Qt

    datasets = window.show_panel("datasets")
    press(window, qtbot, datasets.search, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    teachers = window.panels["teachers"]
    qtbot.waitUntil(lambda: getattr(teachers, "dialog", None) is not None, timeout=3000)
    assert teachers.dialog.isVisible() and teachers.dialog.windowTitle() == "Add teacher"
    teachers.dialog.reject()


def test_ctrl_period_stops_training_from_any_panel(window, qtbot, monkeypatch):
    from PySide6.QtCore import Qt

    stopped = []
    monkeypatch.setattr(window.panels["train"], "stop", lambda: stopped.append(True))
    runs = window.show_panel("runs")
    press(window, qtbot, runs.table, Qt.Key.Key_Period, Qt.KeyboardModifier.ControlModifier)
    assert stopped == [True]


def test_help_lists_every_window_shortcut_and_the_menu_has_them(window):
    help_text = " ".join(window.shortcut_lines())
    menu_keys = {
        act.shortcut().toString()
        for menu in window.menuBar().findChildren(type(window.menuBar().addMenu("x")))
        for act in menu.actions()
        if not act.shortcut().isEmpty()
    }
    for panel in window.panels.values():
        for _, keys, _ in panel.window_actions:
            assert keys in help_text and keys in menu_keys
    assert "Ctrl+N add a teacher" in help_text and "Ctrl+. stop training" in help_text


# -- words and titles -------------------------------------------------------------------------


def test_teacher_counts_are_words_not_teacher_s(window, ws, qtbot):
    from kdstudio.config import TeacherConfig

    panel = window.panels["teachers"]
    said = []
    panel.status_changed.connect(said.append)
    ws.add_teacher(TeacherConfig(name="a", base_url="http://localhost:9/v1", model="m"))
    panel.refresh()
    ws.add_teacher(TeacherConfig(name="b", base_url="http://localhost:9/v1", model="m"))
    panel.refresh()
    assert said[-2:] == ["1 teacher", "2 teachers"]
    window.show_panel("datasets")  # another process adds one while Datasets is on screen
    ws.add_teacher(TeacherConfig(name="c", base_url="http://localhost:9/v1", model="m"))
    panel.refresh()
    assert said[-1] == "2 teachers" and panel.model.rowCount() == 3


def test_the_window_title_names_the_workspace_and_kdstudio_once(window, ws):
    from PySide6.QtWidgets import QApplication

    title = window.windowTitle()
    assert title == f"{ws.root.name} — kdstudio"
    # Qt adds the display name only to a title that does not already end with it
    assert title.endswith(QApplication.applicationDisplayName())


def test_the_local_model_teacher_dialog_asks_only_for_a_folder(window, qtbot):
    from kdstudio.gui.panels.teachers import TeacherDialog

    dialog = TeacherDialog(None, keyring_ok=True)
    qtbot.addWidget(dialog)
    dialog.show()
    form = dialog.form
    dialog.kind.setCurrentIndex(dialog.kind.findData("local"))
    assert form.isRowVisible(dialog.path_row)
    for row in (dialog.base_url, dialog.model, dialog.key_box, dialog.price_in, dialog.price_out):
        assert not form.isRowVisible(row)
    dialog.name.setText("big")
    dialog.path.setText("/models/big")
    dialog.price_in.setValue(3.0)  # left from an endpoint the user typed first
    config = dialog.build()
    assert (config.kind, config.price_in, config.key_source) == ("local", 0.0, "none")
    dialog.kind.setCurrentIndex(dialog.kind.findData("openai"))
    assert form.isRowVisible(dialog.key_box) and form.isRowVisible(dialog.price_in)


def test_evaluation_shows_the_system_turn_and_the_reference_answer(window, ws, tmp_path):
    from support.runs import make_curve_run

    from kdstudio.data import import_dataset

    path = tmp_path / "sys.jsonl"
    path.write_text(
        json.dumps({"system": "Answer in French.", "prompt": "Hello?", "response": "Bonjour."})
        + "\n"
        + json.dumps({"prompt": "Bye?"})
        + "\n"
    )
    import_dataset(ws, path, name="sys")
    run = make_curve_run(ws, "evald", steps=10)
    rows = ws.query("SELECT id, prompt FROM dataset_rows ORDER BY idx")
    with ws.tx() as con:
        eval_id = con.execute(
            "INSERT INTO evaluations(run_id, checkpoint, summary, created_at, step, status)"
            " VALUES (?, 'last', ?, ?, 10, 'finished')",
            (run.id, json.dumps({"n": 2, "planned": 2, "metrics": {}}), time.time()),
        ).lastrowid
        for i, row in enumerate(rows):
            con.execute(
                "INSERT INTO eval_items(eval_id, idx, row_id, prompt, teacher, student_before,"
                " student_after, metrics) VALUES (?,?,?,?,?,?,?, '{}')",
                (eval_id, i, row["id"], row["prompt"], "Salut.", "?", "Salut !"),
            )
    panel = window.show_panel("runs")
    panel.refresh()
    panel.select_run("evald")
    panel.tabs.setCurrentIndex(1)
    assert not panel.items_table.isColumnHidden(1)
    assert panel.items_model.data(panel.items_model.index(0, 1)) == "Answer in French."
    panel.items_table.selectRow(0)
    shown = panel.side["prompt"].toPlainText()
    assert shown.index("Answer in French.") < shown.index("Hello?")
    assert "reference answer" in shown and "Bonjour." in shown


def test_a_hint_stays_muted_when_the_theme_turns_dark(qtbot):
    """A hint takes the palette's placeholder colour, and takes the new one when the
    application's palette changes while the window is open (it kept the light grey)."""
    from PySide6.QtGui import QColor, QPalette
    from PySide6.QtWidgets import QApplication, QVBoxLayout, QWidget

    from kdstudio.gui.widgets import hint

    box = QWidget()
    qtbot.addWidget(box)
    label = hint("what this field is for")
    QVBoxLayout(box).addWidget(label)
    role = QPalette.ColorRole
    assert label.palette().color(role.WindowText) == label.palette().color(role.PlaceholderText)
    light = label.palette().color(role.WindowText)
    app = QApplication.instance()
    before = app.palette()
    dark = QPalette(before)
    for r, colour in [
        (role.Window, "#202124"),
        (role.WindowText, "#e8eaed"),
        (role.PlaceholderText, "#9aa0a6"),
    ]:
        dark.setColor(r, QColor(colour))
    try:
        app.setPalette(dark)
        qtbot.waitUntil(lambda: label.palette().color(role.WindowText) == QColor("#9aa0a6"))
        assert label.palette().color(role.Window) == QColor("#202124")  # the rest still follows
        assert light != QColor("#9aa0a6")
    finally:
        app.setPalette(before)
    qtbot.waitUntil(lambda: label.palette().color(role.WindowText) == light)


def test_a_message_shown_before_the_theme_turns_dark_takes_the_dark_fill(qtbot):
    """The bar coloured itself when a message came, and never again: a warning shown in a
    light theme kept its light fill after the system turned dark (seen under Xvfb)."""
    from PySide6.QtGui import QColor, QPalette
    from PySide6.QtWidgets import QApplication, QVBoxLayout, QWidget

    from kdstudio.gui.widgets import LEVEL_FILLS, MessageBar

    panel = QWidget()  # inside a window, as in every panel (a window itself hears more)
    qtbot.addWidget(panel)
    bar = MessageBar(panel)
    QVBoxLayout(panel).addWidget(bar)
    panel.show()
    bar.show_message("the key was rejected", "warning")
    light, dark = LEVEL_FILLS["warning"]
    assert light in bar.styleSheet()
    app = QApplication.instance()
    before = app.palette()
    night = QPalette(before)
    night.setColor(QPalette.ColorRole.Window, QColor("#202124"))
    try:
        app.setPalette(night)
        qtbot.waitUntil(lambda: dark in bar.styleSheet())
    finally:
        app.setPalette(before)
    qtbot.waitUntil(lambda: light in bar.styleSheet())
