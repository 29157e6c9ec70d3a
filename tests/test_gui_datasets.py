"""Datasets panel and import dialog: every column choosable, skipped lines listed, true stats."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1440, 900))


def test_with_no_prompt_column_found_every_column_can_be_chosen_and_imported(
    qtbot, window, tmp_path
):
    path = tmp_path / "quiz.csv"
    path.write_text("Frage,Antwort,notes\nWie spät?,Acht,x\nWo?,Hier,y\n", encoding="utf-8")
    panel = window.show_panel("datasets")
    panel.import_files([str(path)])
    dialog = panel.importer
    box = dialog.map_boxes["prompt"]
    assert [box.itemText(i) for i in range(box.count())] == ["(auto)", "Frage", "Antwort", "notes"]
    assert dialog.message.level == "error" and not dialog.import_button.isEnabled()
    assert "choose the prompt column under Column mapping" in dialog.message.text
    assert "--map" not in dialog.message.text and "'Frage'" in dialog.message.text
    box.setCurrentText("Frage")
    dialog.map_boxes["response"].setCurrentText("Antwort")
    dialog.update_preview()
    assert dialog.import_button.isEnabled() and dialog.message.text == ""
    assert dialog.model.row(0).prompt == "Wie spät?" and dialog.model.row(0).reference == "Acht"
    with qtbot.waitSignal(dialog.imported, timeout=20_000):
        dialog.start_import()
    assert panel.model.total == 2 and panel.model.row(1).prompt == "Wo?"


def test_skipped_lines_are_listed_with_their_reasons_after_the_import(qtbot, window, tmp_path):
    path = tmp_path / "rough.jsonl"
    good = [json.dumps({"prompt": f"question {i}"}) for i in range(6)]
    lines = [good[0], "{not json", good[1], good[2], "[1, 2]", "{broken", good[3]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    panel = window.show_panel("datasets")
    panel.import_files([str(path)])
    dialog = panel.importer
    assert "listed when the import is done" in dialog.skip_bad.text()
    dialog.skip_bad.setChecked(True)
    with qtbot.waitSignal(dialog.imported, timeout=20_000):
        dialog.start_import()
    text = panel.message.text
    assert "Imported 4 rows" in text and "Skipped 3 bad lines: lines 2, 5-6" in text
    assert "JSON" in text and panel.message.level == "warning"


def test_stats_show_true_quantiles_and_the_histogram_is_labelled_within_min_and_max(
    window, ws, tmp_path
):
    from kdstudio.data import import_dataset, store

    lengths = [150 + (i * 37) % 41 for i in range(300)] + [23, 2100]
    path = tmp_path / "lengths.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{i:04d}" + "x" * (n - 4)}) + "\n" for i, n in enumerate(lengths)
        )
    )
    import_dataset(ws, path, name="lengths")
    panel = window.show_panel("datasets")
    panel.refresh()
    panel.select_dataset("lengths")
    shown = {
        panel.stats_form.itemAt(i, panel.stats_form.ItemRole.LabelRole)
        .widget()
        .text(): panel.stats_form.itemAt(i, panel.stats_form.ItemRole.FieldRole).widget().text()
        for i in range(panel.stats_form.rowCount())
    }
    chars = store.stats(ws, "lengths")["chars"]
    assert (
        shown["p90 / p99"] == f"{chars['p90']:,} / {chars['p99']:,}"
        and "~" not in shown["p90 / p99"]
    )
    assert shown["Chars min / max"] == "23 / 2,100"
    values = [int(label.replace(",", "")) for _, label in panel.hist.ticks]
    assert values[0] == 23 and values[-1] == 2100 and values == sorted(values)
    assert all(23 <= v <= 2100 for v in values)


def test_an_empty_histogram_shows_no_ticks(window):
    panel = window.show_panel("datasets")
    panel.show_stats(None)
    axis = panel.hist.getPlotItem().getAxis("bottom")
    assert panel.hist.ticks == [] and not axis.style["showValues"] and panel.hist.empty.isVisible()
