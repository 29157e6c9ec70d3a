"""Train and Runs panels with a tiny student trained for real: plots, stop, resume, tail, eval."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("pytestqt")
pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from support.gui import tiny_student

    return tiny_student(tmp_path_factory.mktemp("student"))


@pytest.fixture
def trained_ws(ws, tmp_path):
    """A workspace with a collection of answers to train on (teacher answers stored as done)."""
    from support.gui import add_answers_collection

    add_answers_collection(ws, tmp_path)
    return ws


@pytest.fixture
def window(qtbot, trained_ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, trained_ws, tmp_path / "settings")


def fill_form(panel, student, *, steps, name):
    panel.student_path.set_value(str(student))
    panel.collections.set_config_values({"collection": "answers"})
    panel.forms["optim"].set_values({"max_steps": steps, "batch_size": 4, "lr": 3e-3})
    panel.forms["run"].set_values(
        {"name": name, "log_every": 1, "eval_every": 10, "checkpoint_every": 0}
    )


def test_train_panel_runs_a_tiny_student_and_the_plots_fill(qtbot, window, student):
    panel = window.show_panel("train")
    fill_form(panel, student, steps=12, name="t12")
    panel.update_cli()
    assert panel.progress.text() == "0 / 12 steps"  # before any run: the form's steps
    assert (
        "kdstudio --workspace" in panel.command_view.text()
        and "train --config" in panel.command_view.text()
    )
    assert 'collection = "answers"' in panel.toml_view.toPlainText()
    job = panel.start()
    assert panel.progress.maximum() == 12  # the configured steps from the start, not "of 100"
    with qtbot.waitSignal(job.ended, timeout=120_000):
        pass
    assert job.outcome == "succeeded", job.error
    panel.board.flush()
    assert panel.board.point_count("loss") == 12
    assert panel.board.point_count("eval_loss") >= 1
    assert panel.progress.value() == 12
    assert "finished" in panel.message.text
    saved = panel.ws.root / "configs" / "t12.toml"
    assert saved.exists() and "max_steps = 12" in saved.read_text()


def test_the_step_bar_says_the_forms_steps_even_before_the_form_is_complete(window):
    panel = window.show_panel("train")  # no student, no collection: the form is incomplete
    panel.forms["optim"].set_values({"max_steps": 0})
    panel.update_cli()
    assert panel.progress.text() == "steps: counted from the epochs at the start"  # not "0 / 1"
    panel.forms["optim"].set_values({"max_steps": 250})
    panel.update_cli()
    assert panel.progress.text() == "0 / 250 steps"


def test_a_refused_start_says_why_and_is_not_left_setting_up(qtbot, window, student):
    """A problem found while setting up (after Start: here every example is too long for
    data.max_length) ends the job with its reason; nothing stays "setting up"."""
    panel = window.show_panel("train")
    fill_form(panel, student, steps=5, name="too-long")
    panel.forms["data"].set_values({"max_length": 8})
    job = panel.start()
    assert job is not None and "setting up" in panel.progress_label.text()
    with qtbot.waitSignal(job.ended, timeout=60_000):
        pass
    assert job.outcome == "errored"
    label = panel.progress_label.text()
    assert "setting up" not in label and "did not start" in label and "max_length" in label
    assert panel.message.level == "error" and panel.start_button.isEnabled()


def test_the_form_is_restored_when_the_window_opens_again(qtbot, window, student, tmp_path):
    from kdstudio.gui.main_window import MainWindow

    panel = window.show_panel("train")
    fill_form(panel, student, steps=321, name="remembered")
    panel.forms["distill"].set_values({"method": "sparse_kd", "kd_weight": 0.25})
    panel.use_lora.setChecked(True)
    panel.update_cli()
    again = MainWindow(window.ws)  # the same settings: as if reopened
    qtbot.addWidget(again)
    restored = again.panels["train"]
    assert restored.config_dict() == panel.config_dict()
    assert restored.build_config().optim.max_steps == 321 and restored.use_lora.isChecked()
    assert restored.build_config().distill.kd_weight == 0.25


def test_copy_command_writes_the_toml_it_names(window, student):
    import shlex

    from PySide6.QtGui import QGuiApplication

    panel = window.show_panel("train")
    fill_form(panel, student, steps=7, name="copied")
    panel.update_cli()
    path = panel.ws.root / "configs" / "copied.toml"
    assert not path.exists()
    panel.copy_command()
    command = QGuiApplication.clipboard().text()
    named = shlex.split(command)[shlex.split(command).index("--config") + 1]
    assert named == str(path) and path.exists() and "max_steps = 7" in path.read_text()


def test_a_bad_form_value_is_an_inline_message_naming_the_key(window, student):
    panel = window.show_panel("train")
    fill_form(panel, student, steps=5, name="bad")
    panel.forms["optim"].widgets["lr"].setText("fast")
    assert panel.start() is None
    assert "optim.lr" in panel.message.text and panel.message.level == "error"


def test_stop_saves_a_checkpoint_and_resume_continues_the_same_curve(qtbot, window, student):
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.distill import runs

    panel = window.show_panel("train")
    fill_form(panel, student, steps=400, name="long")
    job = panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 3, timeout=120_000)
    panel.stop()
    with qtbot.waitSignal(job.ended, timeout=60_000):
        pass
    run = runs.get_run(panel.ws, "long")
    assert run.status == "stopped"
    stopped_at = run.step
    assert [c.step for c in ckpt.list_checkpoints(panel.ws, "long")][-1] == stopped_at
    runs_panel = window.show_panel("runs")
    runs_panel.refresh()
    runs_panel.select_run("long")
    assert runs_panel.resume_button.isEnabled()
    said = [line for line in panel.log.toPlainText().splitlines() if line.startswith("stopped")]
    assert said
    runs_panel.resume_selected()  # -> the Train panel, ready to resume it
    assert window.tabs.currentWidget() is panel
    assert panel.start_button.text() == "Resume long" and not panel.running_training()
    assert panel.forms["optim"].value("max_steps") == 400  # its stored settings
    job = panel.start()
    assert panel.progress.maximum() == 400 and panel.progress.value() == stopped_at
    log = panel.log.toPlainText()  # what the run said before is still there
    assert all(line in log for line in said) and f"resuming long from step {stopped_at}" in log
    qtbot.waitUntil(lambda: panel.progress.value() >= stopped_at + 2, timeout=120_000)
    panel.stop()
    with qtbot.waitSignal(job.ended, timeout=60_000):
        pass
    panel.board.flush()
    steps = panel.board.plots[0].series["\x00loss"].buffer.view()[0]
    assert steps[0] == 1 and list(steps) == sorted(steps)  # history, then the resumed part
    assert runs.get_run(panel.ws, "long").step > stopped_at


def test_runs_panel_tails_a_run_written_by_another_process(qtbot, window, trained_ws):
    from kdstudio.distill import runs
    from kdstudio.distill.config import TrainConfig
    from kdstudio.workspace import Workspace

    config = TrainConfig.from_dict(
        {
            "student": {"path": "/nowhere"},
            "data": {"collection": "answers"},
            "run": {"name": "cli-run"},
        }
    )
    other = Workspace.open(trained_ws.root)  # its own connections, as a CLI process has
    run = runs.create_run(other, config)
    runs.set_status(other, run.id, "running")
    panel = window.show_panel("runs")
    panel.refresh()
    panel.select_run("cli-run")

    def writer():
        for step in range(1, 31):
            other.add_metrics(run.id, step, {"loss": 3.0 / step, "lr": 1e-3}, time.time())
            time.sleep(0.01)
        other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: panel.board.point_count("loss") == 30, timeout=5000)
    assert panel.model.row(0).status == "running"


def test_evaluate_and_export_from_the_runs_panel(qtbot, window, student, tmp_path):
    train = window.show_panel("train")
    fill_form(train, student, steps=6, name="small")
    job = train.start()
    with qtbot.waitSignal(job.ended, timeout=120_000):
        pass
    panel = window.show_panel("runs")
    panel.refresh()
    panel.select_run("small")
    panel.eval_limit.setValue(2)
    job = panel.evaluate_selected()
    with qtbot.waitSignal(job.ended, timeout=120_000):
        pass
    assert job.outcome == "succeeded", job.error
    assert panel.items_model.rowCount() == 2
    html = panel.summary_view.toHtml()
    assert "student after" in html
    # the prompts have reference answers: both students and the teacher are scored on them
    assert "reference answers" in html
    assert panel.side["teacher"].toPlainText()
    panel.items_table.selectRow(0)
    panel.show_eval_item()
    assert "vs reference" in panel.side["after"].toPlainText()
    assert "reference answer" in panel.side["prompt"].toPlainText()
    job = panel.export_selected(tmp_path / "exported")
    with qtbot.waitSignal(job.ended, timeout=120_000):
        pass
    assert job.outcome == "succeeded", job.error
    assert (tmp_path / "exported" / "config.json").exists()
    assert "Exported" in panel.message.text


def test_preflight_shows_the_core_report_and_leaves_nothing_behind(qtbot, window, student):
    from kdstudio.distill import runs

    panel = window.show_panel("train")
    fill_form(panel, student, steps=5, name="pf")
    panel.preflight()
    assert panel.running_jobs()  # a worker: the window stays responsive while tokenizers load
    qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=120_000)
    report = panel.last_preflight
    assert report is not None and report.ok, report.errors
    assert report.train_examples + report.eval_examples == 40 and report.total_steps == 5
    log = panel.log.toPlainText()
    assert "pre-flight passed" in log and "memory estimate:" in log
    assert panel.message.level == "success" and "5 steps" in panel.message.text
    assert runs.list_runs(panel.ws) == []
    panel.student_path.set_value(str(student.parent / "missing"))
    panel.collections.set_config_values({"collection": "nope"})
    panel.preflight()
    qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=120_000)
    assert panel.message.level == "error" and "missing" in panel.message.text
    assert "1 more" in panel.message.text and "'nope'" in panel.log.toPlainText()
    assert runs.list_runs(panel.ws) == []


def test_a_run_started_from_the_cli_appears_in_runs_and_its_curves_grow(
    qtbot, window, student, tmp_path
):
    import os
    import signal
    import subprocess
    import sys

    from support.gui import ROOT

    from kdstudio.config import dumps_toml

    config = tmp_path / "cli.toml"
    config.write_text(
        dumps_toml(
            {
                "student": {"path": str(student)},
                "data": {"collection": "answers"},
                "optim": {"max_steps": 5000, "batch_size": 4},
                "run": {"name": "from-cli", "log_every": 1, "eval_every": 0, "checkpoint_every": 0},
            }
        )
    )
    panel = window.show_panel("runs")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdstudio",
            "--workspace",
            str(panel.ws.root),
            "train",
            "--config",
            str(config),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        qtbot.waitUntil(lambda: any(r.name == "from-cli" for r in panel.model.rows), timeout=90_000)
        panel.select_run("from-cli")
        qtbot.waitUntil(lambda: panel.board.point_count("loss") >= 3, timeout=90_000)
        first = panel.board.point_count("loss")
        qtbot.waitUntil(lambda: panel.board.point_count("loss") > first, timeout=30_000)  # live
        assert panel.model.row(0).status == "running"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the CLI checkpoints and exits 130
        assert proc.wait(60) == 130, proc.stderr.read().decode()[-2000:]
    qtbot.waitUntil(lambda: panel.model.row(0).status == "stopped", timeout=10_000)


def test_method_fields_show_only_what_applies_and_hidden_ones_stay_default(window, student):
    panel = window.show_panel("train")
    form = panel.forms["distill"]

    def shown():
        return {n for n, w in form.widgets.items() if form.layout_.isRowVisible(w)}

    kd = {"temperature", "kd_weight", "chunk_size"}
    form.set_values({"method": "sft"})
    assert shown() == {"method"} and not panel.jsd_hint.isVisibleTo(panel)
    form.set_values({"method": "sparse_kd"})
    assert shown() == {"method", "tail", "align"} | kd
    form.set_values({"method": "dense_kd", "divergence": "fkl"})
    assert shown() == {"method", "teacher", "divergence", "on_policy", "align"} | kd
    form.set_values({"divergence": "jsd"})
    assert "beta" in shown() and panel.jsd_hint.isVisibleTo(panel)
    fill_form(panel, student, steps=2, name="m")
    panel.teacher_box.setCurrentText("t")
    form.set_values({"on_policy": 0.5, "kd_weight": 0.9})
    assert panel.build_config().distill.on_policy == 0.5
    form.set_values({"method": "sft"})  # on_policy would be refused for sft: it is not sent
    config = panel.build_config()
    assert config.distill.method == "sft" and config.distill.on_policy == 0.0
    assert "on_policy" not in panel.config_dict()["distill"]


def test_sft_loss_plot_draws_ce_once_kd_methods_draw_all_three(qtbot):
    from kdstudio.gui.plots import PlotBoard

    board = PlotBoard(overlay=True)
    qtbot.addWidget(board)
    board.set_run_method("a", "sft")
    board.set_run_method("b", "sparse_kd")
    board.set_run_label("a", "a")
    board.set_run_label("b", "b")
    for step in range(3):
        board.add_metrics(step, {"loss": 1.0, "ce": 1.0}, run="a")
        board.add_metrics(step, {"loss": 1.0, "ce": 0.8, "kd": 1.2}, run="b")
    loss = board.plot_for("loss")
    labels = sorted(s.label for s in loss.series.values())
    assert labels == ["a total (= CE)", "b CE", "b KD", "b total"]
    assert board.point_count("ce") == 3  # only run b's


def test_loss_legend_lists_total_ce_kd_in_the_title_whatever_order_the_history_loads_in(qtbot):
    import numpy as np

    from kdstudio.gui.plots import PlotBoard

    board = PlotBoard()
    qtbot.addWidget(board)
    board.set_run_method("", "dense_kd")
    steps = np.arange(5.0)
    for name in ("kd", "ce", "loss"):  # metric_series returns names alphabetically
        board.add_history("", name, steps, steps)
    board.add_history("", "lr", steps, steps)
    loss = board.plot_for("loss")
    assert [metric for metric, _, _ in loss.legend_entries()] == ["total", "CE", "KD"]
    title = loss.getPlotItem().titleLabel.text
    assert title.index("total") < title.index("CE") < title.index("KD")
    assert "lr" not in board.plot_for("lr").getPlotItem().titleLabel.text  # one curve: no key
    # No legend box over the data: the newest points (at the right edge) are never covered.
    assert all(plot.getPlotItem().legend is None for plot in board.plots)


def test_plot_board_keeps_its_redraws_within_a_share_of_the_gui_thread(qtbot):
    import time

    from kdstudio.gui import plots

    board = plots.PlotBoard()
    qtbot.addWidget(board)
    board.show()
    qtbot.waitExposed(board)
    qtbot.waitUntil(lambda: not board.timer.isActive())  # nothing to draw: it does not tick
    board.add_metrics(1, {"loss": 2.0})
    assert board.timer.isActive()  # new data wakes it
    board.timer.stop()  # drive refresh() by hand
    loss = board.plot_for("loss")

    def drawn() -> int:
        return len(loss.series[next(iter(loss.series))].curve.getData()[0])

    before = time.perf_counter()
    board.refresh()
    assert drawn() == 1 and board.timer.isActive()  # armed for the tick that settles the cost
    board.timer.stop()
    c0 = time.thread_time()
    while time.thread_time() - c0 < 0.02:  # the scene update and paint that follow a redraw
        pass
    board.refresh()  # settles: everything the GUI thread spent since is the redraw's cost
    assert board.last_redraw_s >= 0.02
    wait = min(plots.REDRAW_BUDGET_FACTOR * board.last_redraw_s, plots.MAX_REDRAW_WAIT_S)
    assert board._next_redraw >= before + wait
    board.add_metrics(2, {"loss": 1.5})
    board.timer.stop()
    board.refresh()  # too soon after an expensive redraw: skipped, the data waits
    assert drawn() == 1
    assert board.timer.isActive() and board.timer.interval() >= 0.9 * wait * 1000
    board.timer.stop()
    time.sleep(max(0.0, board._next_redraw - time.perf_counter()) + 0.01)
    board.refresh()
    assert drawn() == 2
    board.timer.stop()
    board.add_metrics(3, {"loss": 1.0})
    board.flush()  # a run's last points are drawn at once, budget or not
    assert drawn() == 3
    board.hide()
    board.add_metrics(4, {"loss": 0.5})
    board.flush()  # a hidden board draws nothing; its data waits for it to be shown
    assert drawn() == 3
    board.show()
    qtbot.waitUntil(lambda: drawn() == 4, timeout=5000)


def test_an_overlay_legend_names_each_line_style_once(qtbot):
    from kdstudio.gui.plots import PlotBoard

    board = PlotBoard(overlay=True)
    qtbot.addWidget(board)
    board.set_run_method("a", "sft")
    board.set_run_method("b", "dense_kd")
    board.add_metrics(1, {"loss": 1.0, "ce": 1.0}, run="a")
    board.add_metrics(1, {"loss": 1.0, "ce": 0.8, "kd": 1.2}, run="b")
    entries = board.plot_for("loss").legend_entries()
    assert [(metric, style) for metric, style, _ in entries] == [
        ("total", "solid"),
        ("CE", "dash"),
        ("KD", "dot"),
    ]
