"""Plots show what the data says: markers, real ticks, robust ranges, smoothing, log y."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def plot(qtbot):
    from kdstudio.gui.plots import MetricPlot

    plot = MetricPlot("Eval loss")
    qtbot.addWidget(plot)
    plot.resize(500, 300)
    plot.show()  # a hidden plot draws nothing
    return plot


@pytest.fixture
def board(qtbot, tmp_path):
    from support.gui import prepare_app

    from kdstudio.gui.plots import PlotBoard

    prepare_app(tmp_path / "settings")
    board = PlotBoard(overlay=True, settings_key="test")
    qtbot.addWidget(board)
    board.resize(1400, 700)
    board.show()
    return board


def ticks(plot, axis: str):
    """The ticks an axis was told to show (None: pyqtgraph spaces them)."""
    levels = plot.getPlotItem().getAxis(axis)._tickLevels
    return None if levels is None else levels[0]


def test_a_single_point_is_a_marker_and_its_value_the_only_tick(plot):
    plot.ensure_series("e", "eval", "#4c8bf5")
    plot.append("e", 10, 2.5)
    plot.refresh()
    curve = plot.series["e"].curve
    assert curve.opts["symbol"] == "o" and list(curve.getData()[0]) == [10.0]
    assert ticks(plot, "bottom") == [(10.0, "10")]  # not 10.0 ... 11.0
    assert ticks(plot, "left") == [(2.5, "2.5")]
    x0, x1 = plot.getPlotItem().getViewBox().viewRange()[0]
    assert x0 < 10 < x1
    plot.append("e", 20, 2.0)
    plot.refresh()
    assert curve.opts["symbol"] is None  # a line from here on
    assert ticks(plot, "bottom") is None and ticks(plot, "left") is None


@pytest.mark.parametrize(
    ("values", "label"),
    [([0.0] * 5, "0"), ([1874.4] * 5, "1874.4"), ([3e-4] * 5, "0.0003")],
)
def test_a_constant_metric_shows_its_own_value_not_an_invented_range(plot, values, label):
    plot.ensure_series("m", "lr", "#4c8bf5")
    plot.extend("m", np.arange(1.0, 6.0), np.array(values))
    plot.refresh()
    ((position, text),) = ticks(plot, "left")
    assert math.isclose(position, values[0]) and text == label


def test_an_empty_plot_and_a_cleared_one_show_no_values(plot):
    left = plot.getPlotItem().getAxis("left")
    assert plot.empty.isVisible() and not left.style["showValues"]
    plot.ensure_series("m", "lr", "#4c8bf5")
    plot.append("m", 1, 0.5)
    plot.refresh()
    plot.clear_series()
    assert plot.empty.isVisible() and not left.style["showValues"]
    assert ticks(plot, "left") is None  # the single-value tick went with the data


def healthy_and_diverged(board):
    steps = np.arange(1.0, 1001.0)
    for run in ("a", "b"):
        board.set_run_label(run, f"run-{run}")
        board.add_history(run, "loss", steps, 1 + 2 * np.exp(-steps / 100))
    board.set_run_label("c", "run-c")
    diverged = np.where(steps < 500, 1 + 2 * np.exp(-steps / 100), 2e7)
    board.add_history("c", "loss", steps, diverged)
    board.flush()
    return board.plot_for("loss")


def test_one_diverged_run_does_not_flatten_the_others_and_is_named(board):
    loss = healthy_and_diverged(board)
    vb = loss.getPlotItem().getViewBox()
    y0, y1 = vb.viewRange()[1]
    assert y0 < 1.0 and 3.0 <= y1 < 10  # the healthy runs fill the plot
    assert [s.run for s in loss.outliers] == ["run-c"]
    assert "run-c" in board.outlier_note.text() and "Loss" in board.outlier_note.toolTip()
    board.controls.ignore_outliers.setChecked(False)  # the outlier is one click away
    board.flush()
    assert vb.viewRange()[1][1] >= 2e7 and not loss.outliers and not board.outlier_note.text()
    board.controls.ignore_outliers.setChecked(True)
    board.controls.log_y.setChecked(True)  # or on a log axis, everything
    board.flush()
    y0, y1 = vb.viewRange()[1]
    assert y0 <= 0.0 and y1 >= math.log10(2e7)


def test_runs_that_merely_differ_all_stay_in_view(board):
    steps = np.arange(1.0, 101.0)
    board.add_history("fast", "tokens_per_s", steps, np.full(100, 20_000.0) + steps)
    board.add_history("slow", "tokens_per_s", steps, np.full(100, 100.0) + steps)
    board.flush()
    plot = board.plot_for("tokens_per_s")
    y0, y1 = plot.getPlotItem().getViewBox().viewRange()[1]
    assert not plot.outliers and y0 <= 101 and y1 >= 20_100


def test_smoothing_draws_the_ema_over_the_faint_raw_curve(board):
    from kdstudio.gui.plots import ema

    board.controls.smoothing.setValue(60)
    steps = np.arange(1.0, 201.0)
    noisy = 1 + np.random.default_rng(0).normal(0, 0.3, 200)
    board.add_history("a", "grad_norm", steps, noisy)
    board.flush()
    series = next(iter(board.plot_for("grad_norm").series.values()))
    assert series.raw_curve.isVisible()
    assert np.allclose(series.raw_curve.getData()[1], noisy)
    assert np.allclose(series.curve.getData()[1], ema(noisy, 0.6)[0])
    assert series.raw_curve.opts["pen"].color().alpha() < 128  # faint
    assert series.raw_curve.zValue() < series.curve.zValue()  # raw behind the smoothed
    board.controls.smoothing.setValue(0)
    board.flush()
    assert not series.raw_curve.isVisible()
    assert np.allclose(series.curve.getData()[1], noisy)


def test_ema_matches_tensorboards_debiased_loop_and_continues_across_calls():
    from kdstudio.gui.plots import ema

    values = np.random.default_rng(1).normal(size=5000)
    for weight in (0.0, 0.3, 0.6, 0.99):
        last, expected = 0.0, []
        for i, v in enumerate(values):  # TensorBoard's own loop
            last = last * weight + (1 - weight) * v
            expected.append(last / (1 - weight ** (i + 1)) if weight else v)
        whole, _ = ema(values, weight)
        head, state = ema(values[:1234], weight)
        tail, _ = ema(values[1234:], weight, state)
        assert np.allclose(whole, expected) and np.allclose(np.concatenate([head, tail]), whole)


def test_log_y_leaves_out_values_of_zero_or_less(board):
    board.controls.log_y.setChecked(True)
    board.controls.smoothing.setValue(0)
    board.add_history("", "lr", np.arange(5.0), np.array([0.0, 1e-4, 1e-3, 1e-4, 0.0]))
    board.flush()
    series = next(iter(board.plot_for("lr").series.values()))
    x, y = series.curve.getData()  # pyqtgraph's own log mapping of what was drawn
    assert list(x) == [1.0, 2.0, 3.0] and np.all(np.isfinite(y))
    y0, y1 = board.plot_for("lr").getPlotItem().getViewBox().viewRange()[1]
    assert y0 <= -4 and y1 >= -3


def test_the_controls_are_remembered_per_board(board, qtbot):
    from kdstudio.gui.plots import PlotBoard

    board.controls.smoothing.setValue(25)
    board.controls.log_y.setChecked(True)
    board.controls.ignore_outliers.setChecked(False)
    again = PlotBoard(settings_key="test")
    qtbot.addWidget(again)
    assert again.controls.value() == 0.25 and again.controls.log_y.isChecked()
    assert not again.controls.ignore_outliers.isChecked()
    other = PlotBoard(settings_key="other")
    qtbot.addWidget(other)
    assert other.controls.value() == 0.6 and not other.controls.log_y.isChecked()


def test_an_overlay_of_five_long_runs_draws_few_hairline_points_at_once(board):
    """What made an overlay take seconds: every noisy point drawn, through wide pens, after
    a redraw budget charged for loading the data. Now each curve is a bounded number of
    points, dense curves are hairlines, and a new selection draws on the next tick."""
    from kdstudio.gui.plots import MAX_DRAWN, THICK_BELOW

    board.flush()
    board.clear()
    assert board._next_redraw == 0.0 and board._charging is None
    steps = np.arange(1.0, 10_001.0)
    rng = np.random.default_rng(0)
    for run in range(5):
        board.set_run_label(str(run), f"run-{run}")
        for name in ("loss", "ce", "kd", "grad_norm"):
            board.add_history(str(run), name, steps, 1 + rng.normal(0, 0.2, steps.size))
    assert board.timer.isActive() and board.timer.interval() <= 50
    board.refresh()
    for plot in board.plots:
        for series in plot.series.values():
            for curve in (series.curve, series.raw_curve):
                n = len(curve.getData()[0])
                assert 0 < n <= 2 * MAX_DRAWN + 64
                if n >= THICK_BELOW:
                    assert curve.opts["pen"].widthF() <= 1.0


def test_stored_curves_load_whole_then_tail_without_repeats(board, ws):
    import time

    from support.runs import make_curve_run

    from kdstudio.distill import runs

    run = make_curve_run(ws, "r", steps=300, eval_every=50)
    last = board.load_stored(ws, run.id, "r")
    stored = runs.metric_series(ws, run.id)
    assert board.point_count("loss") == len(stored["loss"]) == 300
    assert board.point_count("eval_loss") == 6
    assert board.load_stored(ws, run.id, "r", last) == last  # nothing new: nothing added
    ws.add_metrics(run.id, 301, {"loss": 0.5, "lr": 0.0}, time.time())
    last = board.load_stored(ws, run.id, "r", last)
    assert board.point_count("loss") == 301 and board.point_count("lr") == 301
    loss = next(s for k, s in board.plot_for("loss").series.items() if k.endswith("loss"))
    xs, ys = loss.buffer.view()
    assert list(xs) == sorted(xs) and ys[-1] == 0.5


def test_log_y_does_not_count_as_a_zoom_and_clears_the_outlier_note(board):
    loss = healthy_and_diverged(board)
    assert board.outlier_note.text()
    board.controls.log_y.setChecked(True)
    board.flush()
    assert loss._follow and not loss.outliers and board.outlier_note.text() == ""
    board.controls.log_y.setChecked(False)
    board.flush()
    assert loss._follow and board.outlier_note.text()


def test_a_plot_whose_curves_all_went_shows_no_values_again(board):
    board.add_history("a", "grad_norm", np.arange(1.0, 101.0), np.linspace(1, 2, 100))
    board.add_history("b", "loss", np.arange(1.0, 101.0), np.linspace(3, 1, 100))
    board.flush()
    plot = board.plot_for("grad_norm")
    assert plot.getPlotItem().getAxis("left").style["showValues"]
    board.remove_run("a")  # run b has no grad norm
    board.flush()
    assert plot.empty.isVisible() and not plot.getPlotItem().getAxis("left").style["showValues"]
    assert not board.plot_for("loss").empty.isVisible()


def test_histogram_labels_keep_apart_and_end_at_the_data_min_and_max():
    from kdstudio.gui.plots import spaced

    edges = [(16.5, 23), (33.5, 128), (34.5, 160), (35.5, 176), (48.5, 2048), (49.5, 2100)]
    chosen = spaced(edges, 5)
    assert chosen[0] == (16.5, 23) and chosen[-1] == (49.5, 2100)
    positions = [p for p, _ in chosen]
    assert all(b - a >= (49.5 - 16.5) / 4 for a, b in zip(positions, positions[1:], strict=False))
    assert spaced(edges[:2], 5) == edges[:2]


def test_a_histogram_of_one_length_has_one_label_under_its_bar(qtbot):
    from kdstudio.gui.plots import HistogramPlot

    hist = HistogramPlot("Rows by length", "characters")
    qtbot.addWidget(hist)
    hist.set_buckets([(18, 20, 5)], 20, 20, "#4c8bf5")
    assert hist.ticks == [(18.0, "20")] and hist._is_empty is False
    hist.set_buckets([(17, 16, 1), (40, 2048, 2)], 17, 2100, "#4c8bf5")
    assert [label for _, label in hist.ticks][0] == "17" and hist.ticks[-1][1] == "2,100"
