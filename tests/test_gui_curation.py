"""Curation in the window: a check, a judge and best of n from the Outputs panel's Curate
menu, with progress and Stop; the score, reason and decider columns and filters; the Train
panel's choice of several collections."""

from __future__ import annotations

import pytest
from support.curation import answered, write_checks

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    answered(ws, tmp_path, [["good a", "bad"], ["raise", "good b"], ["bad", "bad"]])
    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1440, 900))


@pytest.fixture
def panel(window):
    outputs_panel = window.show_panel("outputs")
    outputs_panel.show_collection("quiz.teacher-a")
    return outputs_panel


def cells(panel, column: int) -> list[str]:
    return [panel.model.data(panel.model.index(i, column)) for i in range(panel.model.rowCount())]


def run(qtbot, panel, kind, config):
    job = panel.curation.start(kind, config)
    assert (
        panel.curation.progress_row.isVisibleTo(panel)
        and not panel.curation.menu_button.isEnabled()
    )
    with qtbot.waitSignal(job.ended, timeout=60_000):
        pass
    return job


def test_a_check_from_the_menu_fills_score_reason_and_decider(qtbot, panel, tmp_path):
    from kdstudio.curate.config import CheckConfig
    from kdstudio.gui.curation import CurateDialog
    from kdstudio.gui.panels.outputs import DECIDER_COLUMN, REASON_COLUMN, SCORE_COLUMN

    checks = write_checks(tmp_path)
    dialog = CurateDialog("check", panel.ws, panel.collection, panel)
    dialog.form.widgets["check_spec"].use_file(str(checks))
    offered = [dialog.form.widgets["check_spec"].box.itemText(i) for i in range(3)]
    assert offered == [f"{checks}:{n}" for n in ("flaky", "length", "slow")]
    dialog.form.set_values({"threshold": 1.5})
    dialog.accept()
    assert (
        dialog.error.isVisibleTo(dialog) and "check.threshold must be <= 1.0" in dialog.error.text()
    )
    dialog.form.set_values({"threshold": 0.5, "workers": 1})
    config = dialog.config()
    assert isinstance(config, CheckConfig) and config.check_spec == f"{checks}:flaky"

    assert panel.table.isColumnHidden(SCORE_COLUMN)  # nobody has decided anything yet
    job = run(qtbot, panel, "check", config)
    assert job.outcome == "succeeded" and not panel.table.isColumnHidden(SCORE_COLUMN)
    assert cells(panel, SCORE_COLUMN) == ["1.00", "0.00", "", "1.00", "0.00", "0.00"]
    assert set(cells(panel, DECIDER_COLUMN)) == {"check:checks.py:flaky"}
    assert cells(panel, REASON_COLUMN)[2] == "raised ValueError: boom (checks.py, line 6)"
    assert panel.message.level == "success"
    assert panel.message.text.startswith(
        "Collection 'quiz.teacher-a' decided by check:checks.py:flaky: 2 accepted, 3 rejected"
    )
    assert not panel.curation.progress_row.isVisibleTo(panel)
    assert panel.curation.menu_button.isEnabled()

    # the decider and score filters
    panel.decider.setCurrentText("check:checks.py:flaky")
    panel.min_score.setValue(0.5)
    panel.apply_filter()
    assert panel.model.rowCount() == 2
    panel.min_score.setValue(0)
    panel.decider.setCurrentText("person")
    panel.apply_filter()
    assert panel.model.rowCount() == 0

    # a person rejects one; the detail pane shows who decided and what came before
    panel.decider.setCurrentText("any")
    panel.apply_filter()
    panel.table.selectRow(0)
    panel.reject_selected()
    panel.table.selectRow(0)
    text = panel.decision_info.text()
    assert (
        text.startswith("<b>rejected</b> by person")
        and "check:checks.py:flaky: accepted 1.00" in text
    )


def test_stop_keeps_the_decisions_made_so_far(qtbot, window, ws, tmp_path):
    from kdstudio.curate.config import CheckConfig

    answered(ws, tmp_path, [f"answer {i}" for i in range(40)], name="many")
    panel = window.show_panel("outputs")
    panel.show_collection("many.teacher-a")
    checks = write_checks(tmp_path)
    config = CheckConfig(collection="many.teacher-a", check_spec=f"{checks}:slow", workers=1)
    job = panel.curation.start("check", config)
    qtbot.waitUntil(lambda: "accepted" in panel.curation.label.text(), timeout=60_000)
    panel.curation.stop_button.click()
    with qtbot.waitSignal(job.ended, timeout=60_000):
        pass
    assert job.outcome == "cancelled"
    assert panel.message.level == "warning" and panel.message.text.startswith("Stopped: ")
    assert "run the same check again to continue" in panel.message.text
    decided = sum(1 for i in range(panel.model.rowCount()) if panel.model.row(i).decider)
    assert 0 < decided < 40


def test_judge_then_best_of_n_from_the_panel(qtbot, panel, tmp_path, monkeypatch):
    from support.openai_server import OpenAIServer

    from kdstudio.config import TeacherConfig
    from kdstudio.curate.config import BestConfig, JudgeConfig
    from kdstudio.gui.curation import CurateDialog

    def judge(body):
        text = body["messages"][-1]["content"]
        return '{"score": 8, "reason": "fine"}' if "good" in text else "Score: 1"

    monkeypatch.setenv("KDSTUDIO_GUI_JUDGE_KEY", "sk-judge")
    with OpenAIServer(api_key="sk-judge", reply=judge) as server:
        panel.ws.add_teacher(
            TeacherConfig(
                name="judge", base_url=server.url, model="teacher-1", key_source="env",
                key_env="KDSTUDIO_GUI_JUDGE_KEY",
            )
        )  # fmt: skip
        dialog = CurateDialog("judge", panel.ws, panel.collection, panel)
        assert dialog.form.value("teacher") == "judge" and dialog.form.value("rubric") == ""
        config = dialog.config()
        assert isinstance(config, JudgeConfig) and config.teacher == "judge"
        assert run(qtbot, panel, "judge", config).outcome == "succeeded"
    assert panel.message.level == "success" and "judge:judge" in panel.message.text
    best = CurateDialog("best", panel.ws, panel.collection, panel)
    by = [best.form.widgets["by"].itemText(i) for i in range(best.form.widgets["by"].count())]
    assert by == ["check", "judge", "confidence", "judge:judge"]
    best.form.set_values({"by": "judge", "min_score": 0.5})
    config = best.config()
    assert isinstance(config, BestConfig)
    assert run(qtbot, panel, "best", config).outcome == "succeeded"
    reviews = [panel.model.row(i).review for i in range(panel.model.rowCount())]
    assert reviews == ["accepted", "rejected", "rejected", "accepted", "rejected", "rejected"]
    assert panel.model.row(5).reason.startswith("none of the 2 samples is good enough")


def test_the_train_panel_trains_on_several_collections(qtbot, window, ws, tmp_path):
    from support.train_data import add_answers

    add_answers(ws, "quiz.b", "quiz", ["x", "y", "z"], teacher="teacher-b")
    add_answers(ws, "quiz.judge.j", "quiz", ["1", "2", "3"], teacher="j")
    ws.db.execute("UPDATE collections SET source='judge' WHERE name='quiz.judge.j'")
    panel = window.show_panel("train")
    panel.refresh()
    picker = panel.collections
    assert picker.names() == ["quiz.b", "quiz.teacher-a"]  # a judge's verdicts: not offered
    about = [picker.table.item(r, 1).text() for r in range(2)]
    assert about == ["teacher-b · 3", "teacher-a · 6"]  # teacher · finished answers
    picker.tick("quiz.teacher-a")
    assert panel.config_dict()["data"]["collection"] == "quiz.teacher-a"
    picker.tick("quiz.b")
    picker.mix.setChecked(True)
    picker.table.cellWidget(0, 2).setValue(3.0)
    data = panel.config_dict()["data"]
    assert (data["collection"], data["collections"]) == (None, ["quiz.b", "quiz.teacher-a"])
    assert data["weights"] == [3.0, 1.0]
    panel.student_path.set_value(str(tmp_path / "student"))
    panel.update_cli()
    assert (
        'collections = [\n    "quiz.b",\n    "quiz.teacher-a",\n]' in panel.toml_view.toPlainText()
    )

    # the form comes back as it was, a collection no longer in the workspace marked
    picker.set_config_values({"collections": ["gone", "quiz.b"], "weights": [1, 2]})
    assert picker.selected() == ["gone", "quiz.b"] and picker.mix.isChecked()
    assert picker.table.item(0, 1).text() == "not in this workspace"
    assert panel.config_dict()["data"]["weights"] == [1.0, 2.0]
