"""Runs that go wrong, in the window (issue 16): a diverged run is said to have diverged (never
a green "finished"), in its own colour, with what happened and the changes that fix it one
click away; a learning rate far outside the usual range and a student folder that does not
exist are said under the form, at once."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from support.gui import tiny_student

    return tiny_student(tmp_path_factory.mktemp("student"))


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import add_answers_collection, studio_window

    add_answers_collection(ws, tmp_path)
    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1400, 900))


def exploding_form(panel, student, name):
    """The issue's run: lr 1000, clipping off, no warmup."""
    panel.student_path.set_value(str(student))
    panel.collections.set_config_values({"collection": "answers"})
    panel.forms["optim"].set_values(
        {"max_steps": 40, "batch_size": 4, "lr": 1000.0, "clip": 0.0, "warmup": 0.0}
    )
    panel.forms["run"].set_values({"name": name, "log_every": 2, "checkpoint_every": 0})


def test_a_diverged_run_is_said_in_the_train_panel_with_the_changes_one_click_away(
    qtbot, window, student
):
    panel = window.show_panel("train")
    exploding_form(panel, student, "boom")
    panel.check_lr()
    assert panel.lr_note.isVisible()
    assert panel.lr_note.text().startswith(
        "Learning rate 1000 (optim.lr) is far above the usual range (1e-6 to 1e-3"
    )
    job = panel.start()
    with qtbot.waitSignal(job.ended, timeout=120_000):
        pass
    assert job.outcome == "succeeded", job.error
    text = panel.message.text
    assert panel.message.level == "error" and "finished" not in text, text
    assert text.startswith("Run boom diverged: the loss exploded to")
    assert "lower optim.lr from 1000 to 1e-3" in text and "optim.clip = 1.0" in text
    assert panel.progress_label.text().startswith("Run boom: diverged at step")
    assert "✗ run boom diverged" in panel.log.toPlainText()
    assert 0 < panel.progress.value() < 40  # the step it stopped at

    assert panel.message._action.text() == "New run with these changes"
    panel.on_message_action()
    optim = panel.forms["optim"].values()
    assert (optim["lr"], optim["clip"], optim["warmup"]) == (1e-3, 1.0, 0.03)
    assert not panel.forms["run"].values().get("name")  # a new run, named when it starts
    assert panel.message.level == "info" and "with these changes" in panel.message.text
    panel.check_lr()
    assert not panel.lr_note.isVisible()


def test_the_runs_panel_shows_a_diverged_run_in_its_colour_with_its_message(qtbot, window, student):
    from PySide6.QtCore import Qt

    from kdstudio.distill import runs
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.trainer import Trainer, run_training
    from kdstudio.gui.panels.runs import STATUS_COLOURS

    config = TrainConfig.from_dict(
        {
            "student": {"path": str(student)},
            "data": {"collection": "answers"},
            "optim": {"max_steps": 40, "batch_size": 4, "lr": 1000.0, "clip": 0.0, "warmup": 0},
            "run": {"name": "cli-boom", "log_every": 2},
        }
    )
    assert run_training(Trainer(config, window.ws)).status == "diverged"  # as from the CLI
    panel = window.show_panel("runs")
    panel.refresh()
    panel.select_run("cli-boom")
    row = [r.name for r in panel.model.rows].index("cli-boom")
    cell = panel.model.index(row, 1)
    assert panel.model.data(cell) == "diverged"
    brush = panel.model.data(cell, Qt.ItemDataRole.ForegroundRole)
    assert brush.color().name() == STATUS_COLOURS["diverged"]
    assert panel.message.level == "error"
    assert panel.message.text.startswith("Run cli-boom diverged: the loss exploded to")
    assert not panel.resume_button.isEnabled()  # the same settings would diverge again
    assert panel.export_button.isEnabled()  # export and evaluation take the last good one
    panel.on_message_action()
    train = window.panels["train"]
    assert window.tabs.currentWidget() is train
    assert train.forms["optim"].values()["lr"] == 1e-3
    assert runs.get_run(window.ws, "cli-boom").status == "diverged"


def test_a_student_folder_that_does_not_exist_is_said_at_once(qtbot, window, tmp_path):
    panel = window.show_panel("train")
    missing = tmp_path / "no-such-student"
    panel.student_path.set_value(str(missing))
    assert panel.student_path.note.isVisible()
    assert panel.student_path.note.text() == f"Folder {missing} does not exist."
    assert panel.start() is None and not panel.running_jobs()
    assert panel.message.level == "error"
    assert panel.message.text == f"Student model folder: folder {missing} does not exist."
    panel.collections.set_config_values({"collection": "answers"})
    panel.preflight()  # lists it with every other problem, as the first
    qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=60_000)
    assert panel.last_preflight.errors[0] == f"student.path: folder {missing} does not exist"
    assert "Repo id" not in panel.log.toPlainText()
    panel.student_path.set_value("")
    assert not panel.student_path.note.isVisible()
