"""Outputs panel: edits are never lost, samples and errors are told apart, shading shows,
special tokens are not text, a search belongs to its collection."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

KEY_ENV = "KDSTUDIO_GUI_OUTPUTS_KEY"


@pytest.fixture(scope="module")
def server():
    from support.openai_server import OpenAIServer

    os.environ[KEY_ENV] = "sk-outputs"
    srv = OpenAIServer(latency=0.0, api_key="sk-outputs").start()
    yield srv
    srv.stop()


@pytest.fixture
def collected(ws, tmp_path, server):
    """Collections of 30 prompts: `arith.loop` (logprobs, two rows failed) and `arith.twice`
    (two samples per prompt)."""
    from support.gui import write_prompts

    from kdstudio.collect import CollectConfig, collect
    from kdstudio.config import TeacherConfig
    from kdstudio.data import import_dataset

    import_dataset(ws, write_prompts(tmp_path / "p.jsonl", 30), name="arith")
    teacher = dict(base_url=server.url, model="teacher-1", key_source="env", key_env=KEY_ENV)
    ws.add_teacher(TeacherConfig(name="loop", **teacher))
    server.add_fault("400", times=2, message="context too long")
    collect(CollectConfig(teacher="loop", dataset="arith", top_logprobs=3, max_tokens=12), ws)
    collect(
        CollectConfig(
            teacher="loop", dataset="arith", name="arith.twice", samples=2, temperature=1.0
        ),
        ws,
    )
    return ws


@pytest.fixture
def panel(qtbot, collected, tmp_path):
    from support.gui import studio_window

    for window in studio_window(qtbot, collected, tmp_path / "settings", size=(1440, 900)):
        outputs_panel = window.show_panel("outputs")
        outputs_panel.show_collection("arith.loop")
        yield outputs_panel


def answer(monkeypatch, button):
    """Answer the next "Unsaved edit" question with `button`; returns the questions asked."""
    from PySide6.QtWidgets import QMessageBox

    asked = []

    def question(parent, title, text, buttons, default):
        asked.append((title, text, buttons))
        return getattr(QMessageBox.StandardButton, button)

    monkeypatch.setattr(QMessageBox, "question", question)
    return asked


def done_rows(panel) -> list[int]:
    return [i for i, row in enumerate(panel.model.rows) if row.status == "done"]


def stored(panel, item):
    from kdstudio.collect import store as outputs

    return outputs.get_item(panel.ws, panel.collection, item.row_id, item.sample).item


def test_clicking_another_row_with_an_unsaved_edit_asks_and_cancel_stays(panel, monkeypatch):
    first, second = done_rows(panel)[:2]
    panel.table.selectRow(first)
    item = panel.detail.item
    panel.start_edit()
    panel.editor.setPlainText("A better answer.")
    asked = answer(monkeypatch, "Cancel")
    panel.table.selectRow(second)
    assert len(asked) == 1 and "row" in asked[0][1]
    assert panel.selected_rows() == [first] and panel.editor.toPlainText() == "A better answer."
    assert panel.response_stack.currentWidget() is panel.editor
    answer(monkeypatch, "Save")
    panel.table.selectRow(second)
    assert stored(panel, item).response == "A better answer." and stored(panel, item).edited
    assert panel.selected_rows() == [second] and panel.detail.item.row_id != item.row_id


def test_discard_drops_the_edit_and_an_unchanged_editor_asks_nothing(panel, monkeypatch):
    first, second, third = done_rows(panel)[:3]
    panel.table.selectRow(first)
    item = panel.detail.item
    original = item.response
    panel.start_edit()
    panel.editor.setPlainText("Not this.")
    answer(monkeypatch, "Discard")
    panel.table.selectRow(second)
    assert stored(panel, item).response == original and not stored(panel, item).edited
    panel.start_edit()  # opened, nothing changed: nothing to ask
    asked = answer(monkeypatch, "Cancel")
    panel.table.selectRow(third)
    assert asked == [] and panel.selected_rows() == [third]


def test_ctrl_enter_saves_the_edit(panel, qtbot):
    from PySide6.QtCore import Qt
    from support.gui import key_chord

    panel.table.selectRow(done_rows(panel)[0])
    item = panel.detail.item
    panel.start_edit()
    panel.editor.setPlainText("Saved by keyboard.")
    key_chord(qtbot, panel.editor, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert stored(panel, item).response == "Saved by keyboard."
    assert panel.response_stack.currentWidget() is panel.response_view


def test_a_new_search_with_an_unsaved_edit_asks_to_save_it(panel, monkeypatch):
    panel.table.selectRow(done_rows(panel)[0])
    item = panel.detail.item
    panel.start_edit()
    panel.editor.setPlainText("Kept across the search.")
    asked = answer(monkeypatch, "Save")
    panel.search.setText("Sort")
    panel.apply_filter()
    assert len(asked) == 1 and stored(panel, item).response == "Kept across the search."


def test_a_failed_request_shows_as_an_error_not_as_an_answer(panel):
    from PySide6.QtCore import Qt

    from kdstudio.gui.panels.outputs import RESPONSE_COLUMN, STATE_COLOURS

    failed = [i for i, row in enumerate(panel.model.rows) if row.status == "failed"]
    assert len(failed) == 2
    index = panel.model.index(failed[0], RESPONSE_COLUMN)
    assert panel.model.data(index).startswith("error: ") and "context too long" in panel.model.data(
        index
    )
    brush = panel.model.data(index, Qt.ItemDataRole.ForegroundRole)
    assert brush.color().name() == STATE_COLOURS["failed"]
    panel.table.selectRow(failed[0])
    assert panel.response_view.tl is None
    assert STATE_COLOURS["failed"] in panel.response_view.toHtml().lower()
    assert "No answer: the request failed" in panel.response_view.toPlainText()


def test_samples_of_one_prompt_are_told_apart_in_their_own_column(panel):
    from kdstudio.gui.panels.outputs import SAMPLE_COLUMN

    assert panel.table.isColumnHidden(SAMPLE_COLUMN)  # one sample a prompt: no column
    panel.show_collection("arith.twice")
    assert not panel.table.isColumnHidden(SAMPLE_COLUMN)
    first_two = [(r.idx, r.sample) for r in panel.model.rows[:2]]
    assert first_two == [(0, 0), (0, 1)]
    shown = [panel.model.data(panel.model.index(i, SAMPLE_COLUMN)) for i in range(2)]
    assert shown == ["0", "1"]


def test_a_search_belongs_to_its_collection(panel):
    panel.search.setText("Reverse")
    panel.apply_filter()
    assert panel.model.total == 10
    panel.collection_box.setCurrentText("arith.twice")
    assert panel.collection == "arith.twice" and panel.search.text() == ""
    assert panel.model.total == 60  # not "0 of 60" with the other collection's search
    assert panel.count_label.text().startswith("60 matching of 60")
    panel.review.setCurrentText("accepted")
    panel.collection_box.setCurrentText("arith.loop")
    assert panel.search.text() == "Reverse" and panel.review.currentText() == "any"
    assert panel.model.total == 10
    panel.collection_box.setCurrentText("arith.twice")
    assert panel.review.currentText() == "accepted"


def tokens(*pieces: bytes, probs=None):
    from kdstudio.logprobs import TokenLogprobs

    n = len(pieces)
    logprobs = np.log(np.asarray(probs if probs is not None else [0.99] * n, dtype=np.float32))
    return TokenLogprobs(
        list(pieces),
        None,
        logprobs,
        [[] for _ in pieces],
        None,
        np.full((n, 0), -np.inf, dtype=np.float32),
    )


def test_special_tokens_are_a_marker_not_text_unless_the_answer_says_them(qtbot):
    from kdstudio.gui.tokenview import SPECIAL_MARK, TokenView

    view = TokenView()
    qtbot.addWidget(view)
    view.show_tokens(tokens(b"u k", b" n", b"<|end|>"), "u k n")
    assert view.toPlainText() == "u k n" + SPECIAL_MARK
    assert "special token" in view.tooltip_for(2)
    view.show_tokens(tokens(b"Say ", b"<|end|>", b" then", b"</s>"), "Say <|end|> then")
    assert view.toPlainText() == "Say <|end|> then" + SPECIAL_MARK  # quoted text stays text
    assert view.token_at(len("Say <|end|> then")) == 3  # the marker hovers as its token


@pytest.mark.parametrize("base", ["#ffffff", "#f6f5f4", "#1e1e1e", "#2d2d2d"])
@pytest.mark.parametrize("p", [0.89, 0.7, 0.49, 0.05])
def test_confidence_shading_stands_out_on_light_and_dark_backgrounds(base, p):
    from PySide6.QtGui import QColor

    from kdstudio.gui.tokenview import colour_for

    shaded, background = QColor(colour_for(p, QColor(base))), QColor(base)
    difference = max(
        abs(a - b) for a, b in zip(shaded.getRgb()[:3], background.getRgb()[:3], strict=True)
    )
    assert difference >= 40, (p, base, shaded.name())
    assert colour_for(0.95, QColor(base)) is None  # a sure token stays plain


def test_the_view_shades_against_its_own_palette_in_dark_mode(qtbot):
    from PySide6.QtGui import QColor, QPalette

    from kdstudio.gui.tokenview import TokenView, colour_for

    view = TokenView()
    qtbot.addWidget(view)
    dark = view.palette()
    dark.setColor(QPalette.ColorRole.Base, QColor("#1e1e1e"))
    dark.setColor(QPalette.ColorRole.Text, QColor("#eeeeee"))
    view.setPalette(dark)
    view.show_tokens(tokens(b"maybe", probs=[0.6]), "maybe")
    assert colour_for(0.6, QColor("#1e1e1e")) in view.toHtml()


def test_switching_to_a_dark_palette_shades_the_shown_answer_again(qtbot):
    from PySide6.QtGui import QColor, QPalette

    from kdstudio.gui.tokenview import TokenView, colour_for

    view = TokenView()
    qtbot.addWidget(view)
    view.show_tokens(tokens(b"maybe", probs=[0.6]), "maybe")
    light = colour_for(0.6, view.palette().color(QPalette.ColorRole.Base))
    assert light in view.toHtml()
    dark = view.palette()
    dark.setColor(QPalette.ColorRole.Base, QColor("#1e1e1e"))
    view.setPalette(dark)  # after the answer is shown, as when the system turns dark
    assert colour_for(0.6, QColor("#1e1e1e")) in view.toHtml() and light not in view.toHtml()
