"""The Runs panel: a table that agrees with `kdstudio runs list` and fits, overlays by run."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1440, 900))


def cell(panel, row: int, title: str) -> str:
    from kdstudio.gui.panels.runs import RUN_COLUMNS

    column = [c.title for c in RUN_COLUMNS].index(title)
    return panel.model.data(panel.model.index(row, column))


def test_a_running_runs_losses_are_what_runs_list_shows_at_the_same_moment(window, ws, run_cli):
    import json

    from support.runs import make_curve_run

    from kdstudio.distill import runs

    run = make_curve_run(ws, "live", steps=200, status="running", eval_every=50)
    # The trainer writes the summary's loss only at the end: a running run has none yet,
    # and its newest metrics are what both must show.
    runs.update_run(ws, run.id, summary={"total_steps": 400})
    ws.add_metrics(run.id, 201, {"loss": 0.123456, "eval_loss": 0.654321}, time.time())
    panel = window.show_panel("runs")
    panel.refresh()
    listed = run_cli("runs", "list", workspace=ws.root)
    assert listed.returncode == 0, listed.stderr
    line = next(li for li in listed.stdout.splitlines() if li.startswith("live"))
    assert cell(panel, 0, "Loss") == "0.1235" and cell(panel, 0, "Eval loss") == "0.6543"
    assert cell(panel, 0, "Loss") in line.split() and cell(panel, 0, "Eval loss") in line.split()
    data = json.loads(run_cli("runs", "list", "--json", workspace=ws.root).stdout)
    assert f"{data[0]['metrics']['loss']:.4f}" == cell(panel, 0, "Loss")


def test_columns_fit_at_1440_and_a_long_error_is_elided_with_a_tooltip(window, ws, qtbot):
    from PySide6.QtCore import Qt
    from support.runs import make_curve_run

    from kdstudio.distill import runs

    run = make_curve_run(ws, "a-run-with-a-long-name", steps=1200, status="failed")
    error = "CUDA out of memory. Tried to allocate 2.00 GiB " * 12
    runs.update_run(ws, run.id, step=5)
    panel = window.show_panel("runs")
    panel.refresh()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    runs.update_run(ws, run.id, step=1200)  # the run went on: "5 / 1,200" grew
    runs.set_status(ws, run.id, "failed", error=error)
    panel.refresh()
    table = panel.table
    metrics = table.fontMetrics()
    columns = table.model().columnCount()
    titles = [table.model().headerData(i, Qt.Orientation.Horizontal) for i in range(columns)]
    step = titles.index("Step")
    assert cell(panel, 0, "Step") == "1,200 / 1,200"
    assert table.columnWidth(step) >= metrics.horizontalAdvance("1,200 / 1,200")
    error_col = titles.index("Error")
    assert table.columnWidth(error_col) < metrics.horizontalAdvance(error)  # elided, and
    right = table.columnViewportPosition(error_col) + table.columnWidth(error_col)
    assert right <= table.viewport().width() + 1  # no column runs off the table
    index = panel.model.index(0, error_col)
    assert panel.model.data(index, Qt.ItemDataRole.ToolTipRole).startswith("CUDA out of memory")


def test_adding_a_run_to_an_overlay_loads_only_that_run_and_removing_keeps_colours(
    window, ws, monkeypatch
):
    from support.runs import make_curve_run

    for name in ("a", "b", "c"):
        make_curve_run(ws, name, steps=50)
    panel = window.show_panel("runs")
    panel.refresh()
    board = panel.board
    loaded: list[int] = []
    original = board.load_stored

    def counting(ws_, run_id, run="", after_rowid=0):
        if not after_rowid:
            loaded.append(run_id)
        return original(ws_, run_id, run, after_rowid)

    monkeypatch.setattr(board, "load_stored", counting)
    selection = panel.table.selectionModel()
    panel.table.clearSelection()
    for row in range(3):
        selection.select(
            panel.model.index(row, 0), selection.SelectionFlag.Select | selection.SelectionFlag.Rows
        )
    assert sorted(loaded) == [1, 2, 3] and board.overlay  # each run read once
    colours = {run: board.run_colour(run) for run in ("1", "3")}
    selection.select(
        panel.model.index(1, 0), selection.SelectionFlag.Deselect | selection.SelectionFlag.Rows
    )
    assert len(loaded) == 3 and {run: board.run_colour(run) for run in ("1", "3")} == colours
    assert board.point_count("loss") == 100  # runs a and c
    selection.select(
        panel.model.index(2, 0), selection.SelectionFlag.Deselect | selection.SelectionFlag.Rows
    )
    assert not board.overlay and board.runs_legend.text() == ""  # one run: colours by metric
