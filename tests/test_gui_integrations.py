"""The window's side of the integrations: a saved Hugging Face datasets folder in the import
step, presets and the served-model list in the Add teacher dialog, the tracker choice in
the Train panel, and "Open in TensorBoard" in Runs."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from kdstudio.gui.testing import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1200, 800))


@pytest.fixture
def saved_dict(tmp_path):
    import datasets

    rows = [{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(12)]
    train = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": train, "test": train.select(range(3))}).save_to_disk(
        str(tmp_path / "qa")
    )
    return tmp_path / "qa"


# -- datasets ---------------------------------------------------------------------------------


def test_a_saved_dataset_dict_imports_from_the_window_with_its_split(qtbot, window, ws, saved_dict):
    panel = window.show_panel("datasets")
    panel.import_files([str(saved_dict)])
    dialog = panel.importer
    assert [dialog.split.itemText(i) for i in range(dialog.split.count())] == ["train", "test"]
    assert dialog.name.text() == "qa-train" and dialog.model.rowCount() == 12
    assert "Hugging Face dataset" in dialog.detected.text()
    dialog.split.setCurrentText("test")
    dialog.update_preview()
    assert dialog.name.text() == "qa-test" and dialog.model.rowCount() == 3
    assert dialog.model.row(2).prompt == "Q2?" and dialog.model.row(2).reference == "A2"
    with qtbot.waitSignal(dialog.imported, timeout=20_000):
        dialog.start_import()
    assert panel.dataset == "qa-test" and panel.model.total == 3
    assert "Imported 3 rows" in panel.message.text


def test_a_folder_that_is_not_a_saved_dataset_is_refused_inline(window, tmp_path):
    (tmp_path / "photos").mkdir()
    panel = window.show_panel("datasets")
    panel.importer = None
    panel.import_files([str(tmp_path / "photos")])
    assert panel.importer is None
    assert panel.message.level == "error" and "save_to_disk" in panel.message.text
