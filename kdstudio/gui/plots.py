"""Live metric plots (pyqtgraph) that stay smooth with the whole run visible, and show only
what the data says.

Each curve is created once. Points go into a numpy buffer that grows by doubling; a curve
gets `setData` only when it changed, from one timer per board (~50 ms after new data, and
within a budget of the GUI thread's CPU, see `PlotBoard.refresh`), never per incoming point;
a board with nothing new, or hidden behind another tab, does not draw at all. Nothing is
ever dropped (no sliding window): a long curve is drawn through a peak-preserving
level-of-detail pyramid (each bucket's min and max, kept up to date incrementally), so a
million-point run costs a few thousand drawn points per frame, and zooming in brings back
full detail. bench/bench_gui.py measures this pyramid against pyqtgraph's own
`setDownsampling(mode="peak")` + `setClipToView(True)`, which rescans every visible point
on every frame (about 4x the GUI-thread time per frame on a million points).

What a plot shows is what the data says: a single point is a marker; an axis whose data
has one value shows that value as its only tick (no range invented around it); an empty
plot shows no tick values at all. The default y range leaves out a curve that runs off by
orders of magnitude (a diverged run) so the others stay legible, and the board says so
above the plots; "Ignore outliers" off, log y or zooming out shows it. Legends live in the
titles and above the plots, never over the newest points. Smoothing is TensorBoard's debiased
EMA, the raw curve drawn faint behind the smoothed one.
"""

from __future__ import annotations

import html
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QGraphicsItem,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from kdstudio.workspace import Workspace

REDRAW_MS = 50
# A board's data redraws (setData, and the scene updates and paints that follow) take at
# most 1/REDRAW_BUDGET_FACTOR of the GUI thread's CPU (1%): after a redraw that cost c, the
# next waits REDRAW_BUDGET_FACTOR x c, but never longer than MAX_REDRAW_WAIT_S.
REDRAW_BUDGET_FACTOR = 100.0
MAX_REDRAW_WAIT_S = 2.0
PALETTE = [
    "#4c8bf5",
    "#e8710a",
    "#1e9e5a",
    "#d93f3f",
    "#9b59d0",
    "#00a3b4",
    "#c4a000",
    "#e052a4",
]

MAX_DRAWN = 1500  # at most about this many buckets (2 points each): ~1 per pixel column
LEVELS = (4, 16, 64, 256, 1024, 4096, 16384, 65536)  # bucket sizes of the pyramid
# Pens wider than a hairline go through Qt's general stroker: on a dense zig-zag that costs
# 10-100x a hairline (5 runs of 10k noisy points took seconds to paint). So only short
# curves get the wider pen; raw curves behind smoothed ones are always hairlines.
THICK_BELOW = 500  # drawn points
THICK, THIN = 1.6, 1.0
RAW_ALPHA = 80  # the raw curve behind a smoothed one: faint, same colour (seen on dark too)
MAX_SMOOTHING = 0.99
DEFAULT_SMOOTHING = 0.6  # TensorBoard's default
# A curve is left out of the default y range when it runs more than this many times the
# scale of the other curves beyond them (a loss of 2e7 beside losses of 1-3).
OUTLIER_FACTOR = 10.0
STYLES = ("solid", "dash", "dot")
STYLE_GLYPHS = {"solid": "━━", "dash": "╍╍", "dot": "┈┈"}
PEN_STYLES = {
    "solid": Qt.PenStyle.SolidLine,
    "dash": Qt.PenStyle.DashLine,
    "dot": Qt.PenStyle.DotLine,
}
WARNING_COLOUR = "#c98a06"


class _Grow:
    """A float64 array that grows by doubling."""

    def __init__(self, capacity: int = 256) -> None:
        self.a = np.empty(capacity)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.a):  # room to grow after a bulk load too: no copy per append
            new = np.empty(max(need + need // 2, 2 * len(self.a)))
            new[: self.n] = self.a[: self.n]
            self.a = new
        self.a[self.n : need] = values
        self.n = need

    def view(self) -> np.ndarray:
        return self.a[: self.n]


class SeriesBuffer:
    """A curve's points (x/y arrays that grow by doubling), their extent, and a
    level-of-detail pyramid.

    `display(x0, x1)` returns what to draw for the x range [x0, x1]: the points themselves
    when there are few, else the min and max of each bucket of the finest level that keeps
    the count under MAX_DRAWN (peak decimation: spikes are never lost). Values must be
    finite (the plot drops the others).
    """

    def __init__(self, capacity: int = 256) -> None:
        self._x, self._y = _Grow(capacity), _Grow(capacity)
        self._levels: dict[int, tuple[_Grow, _Grow, _Grow]] = {}
        self.sorted = True
        self._reset_extent()

    def _reset_extent(self) -> None:
        self.x_lo = self.y_lo = self.y_lo_positive = math.inf
        self.x_hi = self.y_hi = -math.inf

    @property
    def n(self) -> int:
        return self._x.n

    def append(self, x: float, y: float) -> None:
        self.extend(np.array([x], dtype=float), np.array([y], dtype=float))

    def extend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if not len(xs):
            return
        if self.sorted and (
            (self.n and xs[0] < self._x.a[self.n - 1]) or (len(xs) > 1 and np.any(np.diff(xs) < 0))
        ):
            self.sorted = False
        self._x.extend(xs)
        self._y.extend(ys)
        self.x_lo, self.x_hi = min(self.x_lo, xs.min()), max(self.x_hi, xs.max())
        self.y_lo, self.y_hi = min(self.y_lo, ys.min()), max(self.y_hi, ys.max())
        positive = ys[ys > 0]
        if len(positive):
            self.y_lo_positive = min(self.y_lo_positive, positive.min())

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self._x.view(), self._y.view()

    def clear(self) -> None:
        self._x.n = self._y.n = 0
        self._levels.clear()
        self.sorted = True
        self._reset_extent()

    def _level(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x of each bucket's first point, bucket min, bucket max) of complete buckets."""
        bx, lo, hi = self._levels.setdefault(size, (_Grow(), _Grow(), _Grow()))
        done, complete = bx.n, self.n // size
        if complete > done:
            x, y = self.view()
            block = y[done * size : complete * size].reshape(-1, size)
            bx.extend(x[done * size : complete * size : size])
            lo.extend(block.min(axis=1))
            hi.extend(block.max(axis=1))
        return bx.view(), lo.view(), hi.view()

    def display(
        self, x0: float | None = None, x1: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.view()
        i0, i1 = 0, self.n
        if self.sorted and x0 is not None and x1 is not None and self.n:
            i0 = max(0, int(np.searchsorted(x, x0, "left")) - 1)
            i1 = min(self.n, int(np.searchsorted(x, x1, "right")) + 1)
        count = i1 - i0
        if count <= 2 * MAX_DRAWN or not self.sorted:
            return x[i0:i1], y[i0:i1]
        size = next((s for s in LEVELS if count / s <= MAX_DRAWN), LEVELS[-1])
        bx, lo, hi = self._level(size)
        b0, b1 = i0 // size, min(i1 // size, len(bx))
        tail = max(b1 * size, i0)  # raw points after the last complete bucket
        xs = np.concatenate([np.repeat(bx[b0:b1], 2), x[tail:i1]])
        ys = np.concatenate([np.column_stack([lo[b0:b1], hi[b0:b1]]).ravel(), y[tail:i1]])
        return xs, ys


def ema(
    values: np.ndarray, weight: float, state: tuple[float, int] = (0.0, 0)
) -> tuple[np.ndarray, tuple[float, int]]:
    """TensorBoard's smoothing: the debiased exponential moving average of `values`,
    continuing from `state` (the biased average and how many values it has seen).

    Returns the smoothed values and the new state. Vectorised in blocks short enough that
    weight ** -k stays finite, so a million points smooth in milliseconds.
    """
    y = np.asarray(values, dtype=float)
    acc, count = state
    if not len(y):
        return y.copy(), state
    if weight <= 0:
        return y.copy(), (float(y[-1]), count + len(y))
    out = np.empty_like(y)
    block = max(1, int(250 / -math.log10(weight)))
    for start in range(0, len(y), block):
        chunk = y[start : start + block]
        k = np.arange(len(chunk), dtype=float)
        power = weight**k
        biased = power * (weight * acc + (1 - weight) * np.cumsum(chunk * weight**-k))
        out[start : start + len(chunk)] = biased / (1 - weight ** (count + start + k + 1))
        acc = float(biased[-1])
    return out, (acc, count + len(y))


@dataclass
class _Series:
    """One metric of one run in a plot: its raw points and, when smoothing, the EMA."""

    curve: pg.PlotDataItem  # the smoothed curve; the raw one while smoothing is off
    raw_curve: pg.PlotDataItem  # the raw points, faint behind the smoothed curve
    colour: str
    metric: str = ""  # the metric's label in the plot's legend ("total")
    run: str = ""  # the run's label ("" for one run)
    order: tuple = ()  # legend position: (run, metric)
    buffer: SeriesBuffer = field(default_factory=SeriesBuffer)  # raw points
    smooth: SeriesBuffer = field(default_factory=SeriesBuffer)
    ema_state: tuple[float, int] = (0.0, 0)
    dirty: bool = False
    width: float = 0.0
    marker: bool = False

    @property
    def label(self) -> str:
        return f"{self.run} {self.metric}".strip()


def theme_colours(widget: QWidget | None = None) -> tuple[str, str]:
    """(background, foreground) of plots: the palette's base and text colours."""
    pal = widget.palette() if widget is not None else QApplication.palette()
    return (
        pal.color(QPalette.ColorRole.Base).name(),
        pal.color(QPalette.ColorRole.Text).name(),
    )


def fmt_tick(value: float) -> str:
    """A tick label for a value the data really has (12, 0.0003, 1874.4)."""
    if float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value):,}"
    return f"{value:.6g}"


class BasePlot(pg.PlotWidget):
    """A plot that follows the palette and never labels values the data does not have.

    Empty, it shows a line of text and no tick values; an axis whose data has a single
    value shows that value as its only tick (`set_axis_values`).
    """

    def __init__(
        self, title: str, y_label: str = "", x_label: str = "", parent: QWidget | None = None
    ) -> None:
        background, _ = theme_colours()
        super().__init__(parent=parent, background=background)
        self.title = title
        item = self.getPlotItem()
        # pyqtgraph's "Plot Options" (its own log, downsampling, FFT ...) would bypass the
        # board's controls; its view menu (View All, export) stays.
        item.setMenuEnabled(enableMenu=False, enableViewBoxMenu=True)
        item.showGrid(x=True, y=True, alpha=0.15)
        self.labels = {"bottom": x_label, "left": y_label}
        for axis in ("left", "bottom"):
            ax = item.getAxis(axis)
            # Major ticks only: minor grid lines cost most of a frame to rasterise.
            ax.setStyle(maxTickLevel=0)
            # No "(x1e-3)" prefixes: the tick labels say it, and re-rendering the axis label
            # (rich text) on every range change was a fair share of a redraw's cost.
            ax.enableAutoSIPrefix(False)
            # Replay the axis (ticks, labels, grid) from a pixmap unless its range changed:
            # re-drawing its text was the largest part of a repaint.
            ax.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.setMinimumHeight(150)
        self.empty = pg.TextItem("no data yet", color="#888888", anchor=(0.5, 0.5))
        vb = item.getViewBox()
        self.empty.setParentItem(vb)
        vb.sigResized.connect(self._place_empty)
        self._single: dict[str, float | None] = {"left": None, "bottom": None}
        self._is_empty: bool | None = None
        self.apply_theme()
        self._place_empty()
        self.set_empty(True)

    def title_html(self, foreground: str) -> str:
        """The title line (subclasses add a legend)."""
        return html.escape(self.title)

    def update_title(self) -> None:
        """Set the title when its text changed (rendering rich text costs a redraw)."""
        _, foreground = theme_colours(self)
        text = self.title_html(foreground)
        if (text, foreground) != getattr(self, "_title_shown", None):
            self._title_shown = (text, foreground)
            self.getPlotItem().setTitle(text, color=foreground, size="10pt")

    def apply_theme(self) -> None:
        background, foreground = theme_colours(self)
        self.setBackground(background)
        item = self.getPlotItem()
        for axis in ("left", "bottom"):
            ax = item.getAxis(axis)
            ax.setPen(pg.mkPen(foreground))
            ax.setTextPen(pg.mkPen(foreground))
            if self.labels[axis]:
                item.setLabel(axis, self.labels[axis], color=foreground)
        self.update_title()

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Follow the system palette when it switches between light and dark."""
        kinds = (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
        if event.type() in kinds and getattr(self, "_is_empty", None) is not None:  # built
            self.apply_theme()
        super().changeEvent(event)

    def set_empty(self, empty: bool) -> None:
        """An empty plot says so, with no made-up tick values (0.2 ... 0.8) on its axes."""
        if self._is_empty == empty:
            return  # restyling an axis re-renders it: only on a change
        self._is_empty = empty
        self.empty.setVisible(empty)
        for axis in ("left", "bottom"):
            self.getPlotItem().getAxis(axis).setStyle(showValues=not empty)

    def set_empty_text(self, text: str) -> None:
        """What an empty plot says (e.g. "no GPU: training on the CPU")."""
        self.empty.setText(text)

    def _place_empty(self) -> None:
        rect = self.getPlotItem().getViewBox().boundingRect()
        self.empty.setPos(rect.center())

    def set_axis_values(self, axis: str, single: float | None, label: str | None = None) -> None:
        """`single`: the one value the data has on `axis` (at `single` in view coordinates,
        labelled `label`), shown as its only tick; None: ticks as pyqtgraph spaces them."""
        if self._single[axis] == single:
            return
        self._single[axis] = single
        ax = self.getPlotItem().getAxis(axis)
        if single is None:
            ax.setTicks(None)
        else:
            ax.setTicks([[(single, label if label is not None else fmt_tick(single))], []])


class MetricPlot(BasePlot):
    """One plot with named curves; call `refresh()` (the board's timer does) to redraw.

    While it follows the data (until the user zooms or pans; the "A" button follows
    again), x spans the whole run and y a robust range: see `_y_target`.
    """

    def __init__(self, title: str, y_label: str = "", parent: QWidget | None = None) -> None:
        self.series: dict[str, _Series] = {}
        self.outliers: list[_Series] = []  # curves left out of the y range
        self.smoothing = 0.0
        self.log_y = False
        self.ignore_outliers = True
        self.overlay = False  # colours are runs (the board says which), not metrics
        super().__init__(title, y_label, "step", parent)
        vb = self.getPlotItem().getViewBox()
        # The view follows the data here (`_follow`), not through pyqtgraph's auto range,
        # which refits (and re-lays out the axes and grid) on every frame of a growing run
        # and would let one diverged curve flatten all the others.
        vb.enableAutoRange(x=False, y=False)
        vb.sigRangeChanged.connect(self._on_range_changed)
        vb.sigResized.connect(self._on_resized)
        self._follow = True
        self._fitted: dict[str, tuple[float, float]] = {}  # axis -> range set while following
        self._fit_key: tuple = ()  # what the y range was fitted to (curves, log)
        self._setting_range = False
        self._range_dirty = False
        self.on_change: Callable[[], None] | None = None  # the board's: wake its timer

    # -- view options (the board's controls) --------------------------------------------
    def set_view_options(self, smoothing: float, log_y: bool, ignore_outliers: bool) -> None:
        if log_y != self.log_y:
            self.log_y = log_y
            self._setting_range = True  # not the user's zoom: the axis changed its units
            try:
                self.getPlotItem().setLogMode(y=log_y)
                # pyqtgraph turns its own auto range on with log mode; the view follows
                # the data here instead (`_follow_data`), outliers left out
                self.getPlotItem().getViewBox().enableAutoRange(x=False, y=False)
            finally:
                self._setting_range = False
            self._follow, self._fitted = True, {}  # a range in the old units means nothing
        self.ignore_outliers = ignore_outliers
        if smoothing != self.smoothing:
            self.smoothing = smoothing
            for series in self.series.values():
                self._resmooth(series)
        self._fit_key = ()  # fit again from scratch
        for series in self.series.values():
            series.dirty = True
        self._changed()

    def _resmooth(self, series: _Series) -> None:
        series.smooth.clear()
        series.ema_state = (0.0, 0)
        if self.smoothing > 0:
            x, y = series.buffer.view()
            smoothed, series.ema_state = ema(y, self.smoothing)
            series.smooth.extend(x, smoothed)

    # -- range following ----------------------------------------------------------------
    def _on_range_changed(self) -> None:
        if not self._setting_range:  # zoomed or panned (not by _follow): stop following,
            self._follow = False  # and redraw the visible part in detail
            self._range_dirty = True
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def pending(self) -> bool:
        """Whether `refresh()` has something to draw."""
        return self._range_dirty or any(s.dirty for s in self.series.values())

    def _on_resized(self) -> None:
        if self._follow and self._fitted:
            self._set_range(self._fitted.get("bottom"), self._fitted.get("left"))

    def _set_range(self, x: tuple[float, float] | None, y: tuple[float, float] | None) -> None:
        self._setting_range = True
        try:  # padding by the view's size, as auto range does
            self.getPlotItem().getViewBox().setRange(xRange=x, yRange=y)
        finally:
            self._setting_range = False

    def _x_extent(self) -> tuple[float, float] | None:
        spans = [(s.buffer.x_lo, s.buffer.x_hi) for s in self.series.values() if s.buffer.n]
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def _y_spans(self) -> dict[str, tuple[float, float]]:
        """Each curve's y extent in view coordinates (log10 on a log axis)."""
        spans = {}
        for key, s in self.series.items():
            b = s.buffer
            if not b.n:
                continue
            if self.log_y:
                if b.y_hi > 0:
                    spans[key] = (math.log10(b.y_lo_positive), math.log10(b.y_hi))
            else:
                spans[key] = (b.y_lo, b.y_hi)
        return spans

    def _y_target(self) -> tuple[float, float] | None:
        """The default y range: every curve, except (with "Ignore outliers", on a linear
        axis) curves that run more than OUTLIER_FACTOR times the others' scale beyond them.

        The others' scale: the band between the lowest top and the highest bottom of all
        curves, and its distance from 0. A diverged loss (2e7 beside 1-3) or a learning rate
        of 1000 beside 1e-4 is left out (listed in `outliers`); runs that merely differ
        (20,000 vs 100 tokens/s, a KD loss 5x an SFT one) all stay in view.
        """
        spans = self._y_spans()
        kept = dict(spans)
        if self.ignore_outliers and not self.log_y and len(spans) > 1:
            top = min(hi for _, hi in spans.values())
            bottom = max(lo for lo, _ in spans.values())
            a, b = min(top, bottom), max(top, bottom)
            tol = OUTLIER_FACTOR * max(abs(a), abs(b), b - a)
            kept = {k: (lo, hi) for k, (lo, hi) in spans.items() if lo >= a - tol and hi <= b + tol}
        self.outliers = [self.series[k] for k in spans if k not in kept]
        if not kept:
            return None
        return min(lo for lo, _ in kept.values()), max(hi for _, hi in kept.values())

    def _follow_data(self) -> None:
        """Keep the whole run in view. A growing run extends a range by a tenth of its span
        at a time, so the axes and grid are laid out again every few dozen frames rather
        than on every one. An axis whose data has one value is centred on it, with that
        value as its only tick."""
        target = {"bottom": self._x_extent(), "left": self._y_target()}
        key = (tuple(self.series), self.log_y, tuple(id(s) for s in self.outliers))
        if key != self._fit_key:
            self._fit_key, self._fitted = key, {}
        ranges: dict[str, tuple[float, float] | None] = {}
        for axis, extent in target.items():
            if extent is None:
                ranges[axis] = None
                continue
            lo, hi = extent
            single = lo == hi
            label = fmt_tick(10**lo if axis == "left" and self.log_y else lo)
            self.set_axis_values(axis, lo if single else None, label)
            fitted = self._fitted.get(axis)
            if single:
                half = 0.5 if axis == "bottom" else max(abs(lo) * 0.1, 1e-9)
                lo, hi = lo - half, hi + half
            elif fitted is not None and fitted[0] <= lo and hi <= fitted[1]:
                ranges[axis] = None  # still inside: leave the axis alone
                continue
            elif fitted is not None:  # growing: leave room for what comes next
                span = hi - lo
                lo = lo - 0.1 * span if lo < fitted[0] else fitted[0]
                hi = hi + 0.1 * span if hi > fitted[1] else fitted[1]
            self._fitted[axis] = (lo, hi)
            ranges[axis] = (lo, hi)
        if ranges["bottom"] is not None or ranges["left"] is not None:
            self._set_range(ranges["bottom"], ranges["left"])
        self.update_title()

    # -- curves -------------------------------------------------------------------------
    def ensure_series(
        self,
        key: str,
        label: str,
        colour: str,
        style: str = "solid",
        order: tuple = (),
        run: str = "",
    ) -> _Series:
        """The curve `key` (metric `label` of run `run`), created on first use; the title's
        legend lists metrics by `order`."""
        series = self.series.get(key)
        if series is None:
            item = self.getPlotItem()
            raw = item.plot(pen=pg.mkPen(_faint(colour), width=THIN))
            raw.setZValue(-1)  # every raw curve under every smoothed one
            raw.setVisible(False)
            pen = pg.mkPen(QColor(colour), width=THICK)
            pen.setStyle(PEN_STYLES[style])
            curve = item.plot(pen=pen)
            series = _Series(curve, raw, colour, label, run, order)
            self.series[key] = series
            self._fit_key = ()
            self.update_title()
        return series

    def append(self, key: str, x: float, y: float) -> None:
        if math.isfinite(y):
            self.extend(key, np.array([x], dtype=float), np.array([y], dtype=float))

    def extend(self, key: str, xs: np.ndarray, ys: np.ndarray) -> None:
        series = self.series[key]
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        keep = np.isfinite(ys) & np.isfinite(xs)
        xs, ys = xs[keep], ys[keep]
        if not len(xs):
            return
        series.buffer.extend(xs, ys)
        if self.smoothing > 0:  # no smoothed copy of a million points nobody looks at
            smoothed, series.ema_state = ema(ys, self.smoothing, series.ema_state)
            series.smooth.extend(xs, smoothed)
        series.dirty = True
        self._changed()

    def _draw(self, series: _Series, x0: float | None, x1: float | None) -> None:
        x, y = series.buffer.display(x0, x1)
        smoothing = self.smoothing > 0 and series.buffer.n > 1
        if smoothing:
            self._set_curve_data(series.raw_curve, x, y)
            x, y = series.smooth.display(x0, x1)
        series.raw_curve.setVisible(smoothing)
        width = THICK if len(x) < THICK_BELOW else THIN
        if width != series.width:
            series.width = width
            pen = pg.mkPen(series.curve.opts["pen"])
            pen.setWidthF(width)
            series.curve.setPen(pen)
        marker = series.buffer.n == 1  # a single point: a line would draw nothing
        if marker != series.marker:
            series.marker = marker
            if marker:
                series.curve.setSymbol("o")
                series.curve.setSymbolSize(7)
                series.curve.setSymbolBrush(QColor(series.colour))
                series.curve.setSymbolPen(None)
            else:
                series.curve.setSymbol(None)
        self._set_curve_data(series.curve, x, y)

    def _set_curve_data(self, curve: pg.PlotDataItem, x: np.ndarray, y: np.ndarray) -> None:
        if self.log_y:  # log10 of 0 or less is no point: leave them out, not as NaN paths
            positive = y > 0
            x, y = x[positive], y[positive]
        curve.setData(x, y, antialias=True, skipFiniteCheck=True)

    def refresh(self) -> int:
        """setData on the curves that changed (or all, after a zoom); how many were redrawn.

        A hidden plot (another tab) draws nothing; its data waits, still marked changed."""
        if not self.isVisible():
            return 0
        vb = self.getPlotItem().getViewBox()
        if any(vb.state["autoRange"]):  # the "A" button or View All: follow the data again
            vb.enableAutoRange(x=False, y=False)
            self._follow, self._fitted, self._range_dirty = True, {}, True
        x0, x1 = (None, None) if self._follow else vb.viewRange()[0]
        redrawn = 0
        for series in self.series.values():
            if series.dirty or self._range_dirty:
                self._draw(series, x0, x1)
                series.dirty = False
                redrawn += 1
        self._range_dirty = False
        if redrawn:
            if self._follow:
                self._follow_data()
            self.set_empty(self.point_count() == 0)
        return redrawn

    def point_count(self) -> int:
        return sum(s.buffer.n for s in self.series.values())

    def recolour(self, key: str, colour: str, run: str) -> None:
        """Give a curve another colour and run label (one run shown <-> several)."""
        series = self.series[key]
        if (series.colour, series.run) == (colour, run):
            return
        series.colour, series.run = colour, run
        pen = pg.mkPen(series.curve.opts["pen"])
        pen.setColor(QColor(colour))
        series.curve.setPen(pen)
        series.curve.setSymbolBrush(QColor(colour))
        series.raw_curve.setPen(pg.mkPen(_faint(colour), width=THIN))
        self.update_title()

    def remove_series(self, keys: list[str]) -> None:
        """Take curves away (a run no longer selected); the others stay as they are."""
        for key in keys:
            series = self.series.pop(key, None)
            if series is not None:
                self.getPlotItem().removeItem(series.curve)
                self.getPlotItem().removeItem(series.raw_curve)
        self._fit_key, self._range_dirty = (), True
        if not self.point_count():  # nothing left: no axis values from the curves gone
            self.clear_series()
            return
        self.update_title()
        self._changed()

    def clear_series(self) -> None:
        for series in self.series.values():
            self.getPlotItem().removeItem(series.curve)
            self.getPlotItem().removeItem(series.raw_curve)
        self.series.clear()
        self.outliers = []
        self._follow, self._fitted, self._fit_key = True, {}, ()
        for axis in ("left", "bottom"):
            self.set_axis_values(axis, None)
        self.set_empty(True)
        self.update_title()

    # -- the title: legend of metrics, curves out of view -------------------------------
    def legend_entries(self) -> list[tuple[str, str, str]]:
        """(metric label, style, colour) of each metric drawn, in legend order: one entry
        per line style, named plainly ("total", not one run's "total (= CE)")."""
        seen: dict[tuple, tuple[str, str, str]] = {}
        for s in sorted(self.series.values(), key=lambda s: (len(s.metric), s.order)):
            seen.setdefault(s.order[1:], (s.metric, _style_of(s.curve), s.colour))
        return [seen[key] for key in sorted(seen)]

    def title_html(self, foreground: str) -> str:
        parts = [f"<b>{html.escape(self.title)}</b>"]
        entries = self.legend_entries()
        if len(entries) > 1:  # one metric: the title says it
            for metric, style, colour in entries:
                shown = foreground if self.overlay else colour
                parts.append(
                    f"<span style='color:{shown}'>{STYLE_GLYPHS[style]}</span>"
                    f"&nbsp;{html.escape(metric)}"
                )
        return " &nbsp; ".join(parts)


def _faint(colour: str) -> QColor:
    c = QColor(colour)
    c.setAlpha(RAW_ALPHA)
    return c


def _style_of(curve: pg.PlotDataItem) -> str:
    pen_style = curve.opts["pen"].style()
    return next((name for name, s in PEN_STYLES.items() if s == pen_style), "solid")


class HistogramPlot(BasePlot):
    """Counts per bucket of values (dataset lengths), bars side by side in bucket order.

    The axis is labelled at bucket edges with values the data can have: the first edge
    is the smallest value, the last the largest, the ones between the buckets' lower
    bounds; an empty histogram shows no ticks.
    """

    MAX_LABELS = 5

    def __init__(self, title: str, x_label: str = "", parent: QWidget | None = None) -> None:
        super().__init__(title, "", x_label, parent)
        self.getPlotItem().hideAxis("left")
        # The first and last labels sit on the outer edges (the data's min and max): draw
        # them even where they pass the axis' ends, with room left for them on both sides.
        # (pyqtgraph lets a label pass an axis' end by this many pixels only without a grid)
        self.getPlotItem().showGrid(x=False, y=False)
        self.getPlotItem().getAxis("bottom").setStyle(hideOverlappingLabels=40)
        self.getPlotItem().layout.setContentsMargins(18, 4, 22, 4)
        self.setMouseEnabled(False, False)
        self.getPlotItem().hideButtons()
        self.bars: pg.BarGraphItem | None = None
        self.ticks: list[tuple[float, str]] = []

    def set_buckets(
        self, buckets: list[tuple[int, int, int]], smallest: int, largest: int, colour: str
    ) -> None:
        """`buckets`: (position, lower bound, count) in position order; positions may skip
        (empty buckets show as gaps). `smallest`/`largest`: the data's min and max."""
        if self.bars is not None:
            self.getPlotItem().removeItem(self.bars)
            self.bars = None
        if not buckets:
            self.ticks = []
            self.getPlotItem().getAxis("bottom").setTicks([[], []])
            self.set_empty(True)
            return
        x = [p for p, _, _ in buckets]
        self.bars = pg.BarGraphItem(
            x=x, height=[k for _, _, k in buckets], width=0.85, brush=colour, pen=None
        )
        self.getPlotItem().addItem(self.bars)
        edges = [(x[0] - 0.5, smallest)]
        edges += [(p - 0.5, max(lo, smallest)) for p, lo, _ in buckets[1:]]
        edges.append((x[-1] + 0.5, largest))
        self.ticks = [(pos, _short(value)) for pos, value in spaced(edges, self.MAX_LABELS)]
        if smallest == largest:  # one length: one label, under its bar
            self.ticks = [(float(x[0]), _short(smallest))]
        self.getPlotItem().getAxis("bottom").setTicks([self.ticks, []])
        self.getPlotItem().getViewBox().setRange(
            xRange=(x[0] - 0.6, x[-1] + 0.6), yRange=(0, max(k for _, _, k in buckets))
        )
        self.set_empty(False)


def spaced(edges: list[tuple[float, int]], most: int) -> list[tuple[float, int]]:
    """At most `most` of `edges` (position, value), the first and the last always, the
    others only where they keep a fair share of the axis clear (labels never overlap)."""
    if len(edges) <= 2:
        return edges
    gap = (edges[-1][0] - edges[0][0]) / (most - 1)
    kept = [edges[0]]
    for edge in edges[1:-1]:
        if edge[0] - kept[-1][0] >= gap and edges[-1][0] - edge[0] >= gap:
            kept.append(edge)
    return [*kept, edges[-1]]


def _short(n: int) -> str:
    return f"{n:,}" if n < 10_000 else f"{n / 1000:.0f}k"


@dataclass(frozen=True)
class PlotSpec:
    """Which metrics a plot shows: (metric name, legend label) pairs, first match wins."""

    title: str
    metrics: tuple[tuple[str, str], ...]
    y_label: str = ""


# The trainer's metric names (kdstudio.distill) and where each is drawn.
TRAIN_PLOTS = (
    PlotSpec("Loss", (("loss", "total"), ("ce", "CE"), ("kd", "KD")), "loss"),
    PlotSpec("Eval loss", (("eval_loss", "eval"),), "loss"),
    PlotSpec("Learning rate", (("lr", "lr"),)),
    PlotSpec("Grad norm", (("grad_norm", "grad norm"),)),
    PlotSpec("Tokens / s", (("tokens_per_s", "tokens/s"),)),
    PlotSpec("GPU memory", (("gpu_mem_gb", "GiB"),), "GiB"),
)
# Metrics that equal another for a method, drawn once: with SFT the loss is the CE, and a CE
# curve would hide exactly under the total. The total's legend says so instead.
SAME_CURVE = {"sft": {"ce": "loss"}}


class PlotControls(QWidget):
    """Smoothing, log y and "ignore outliers": how every plot of a board is drawn.

    Remembered per board (`settings_key`) between sessions.
    """

    changed = Signal()

    def __init__(self, settings_key: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings_key = settings_key
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setRange(0, round(MAX_SMOOTHING * 100))
        self.smoothing.setFixedWidth(140)
        self.smoothing.setToolTip(
            "Exponential moving average of each curve (as TensorBoard's smoothing); the raw "
            "points stay drawn, faint, behind the smoothed line. 0 = raw only."
        )
        self.smoothing_label = QLabel()
        self.smoothing_label.setMinimumWidth(30)
        self.log_y = QCheckBox("Log y")
        self.log_y.setToolTip("A logarithmic y axis (values of 0 or less are not drawn)")
        self.ignore_outliers = QCheckBox("Ignore outliers")
        self.ignore_outliers.setToolTip(
            "Leave curves that run orders of magnitude beyond the others (a diverged run) out "
            "of the y range, so the others stay readable; the plot's title names them"
        )
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Smoothing"))
        row.addWidget(self.smoothing)
        row.addWidget(self.smoothing_label)
        row.addSpacing(12)
        row.addWidget(self.log_y)
        row.addWidget(self.ignore_outliers)
        self._restore()
        self.smoothing.valueChanged.connect(self._on_changed)
        self.log_y.toggled.connect(self._on_changed)
        self.ignore_outliers.toggled.connect(self._on_changed)
        self._show_smoothing()

    def _setting(self, name: str) -> str:
        return f"plots/{self.settings_key}/{name}"

    def _restore(self) -> None:
        values = {"smoothing": DEFAULT_SMOOTHING, "log_y": False, "ignore_outliers": True}
        if self.settings_key:
            from kdstudio.gui import settings

            s = settings.settings()
            values = {name: s.value(self._setting(name), value) for name, value in values.items()}
        self.smoothing.setValue(round(float(values["smoothing"]) * 100))
        # QSettings' INI files give "true"/"false" back as text
        self.log_y.setChecked(str(values["log_y"]).lower() == "true")
        self.ignore_outliers.setChecked(str(values["ignore_outliers"]).lower() == "true")

    @Slot()
    def _on_changed(self) -> None:
        self._show_smoothing()
        if self.settings_key:
            from kdstudio.gui import settings

            s = settings.settings()
            s.setValue(self._setting("smoothing"), self.value())
            s.setValue(self._setting("log_y"), self.log_y.isChecked())
            s.setValue(self._setting("ignore_outliers"), self.ignore_outliers.isChecked())
        self.changed.emit()

    def _show_smoothing(self) -> None:
        self.smoothing_label.setText(f"{self.value():.2f}")

    def value(self) -> float:
        return self.smoothing.value() / 100


class PlotBoard(QWidget):
    """A grid of MetricPlots fed with metrics by name; one timer redraws what changed.

    With several runs (`run` keys), each run gets one colour (named above the plots) and
    each metric within a plot one line style (named in the plot's title), so curves of
    several runs overlay legibly.
    """

    def __init__(
        self,
        specs: tuple[PlotSpec, ...] = TRAIN_PLOTS,
        columns: int = 3,
        *,
        overlay: bool = False,
        settings_key: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.specs = specs
        self.plots: list[MetricPlot] = []
        self._route: dict[str, tuple[MetricPlot, int, str]] = {}
        self.controls = PlotControls(settings_key)
        self.controls.changed.connect(self.apply_view_options)
        self.outlier_note = QLabel()
        self.outlier_note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.runs_legend = QLabel()
        self.runs_legend.setWordWrap(True)
        self.runs_legend.setTextFormat(Qt.TextFormat.RichText)
        self.runs_legend.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        top = QHBoxLayout()
        top.addWidget(self.controls)
        top.addSpacing(12)
        top.addWidget(self.outlier_note)
        top.addWidget(self.runs_legend, 1)
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(4)
        outer.addLayout(top)
        outer.addLayout(grid, 1)
        for i, spec in enumerate(specs):
            plot = MetricPlot(spec.title, spec.y_label)
            plot.on_change = self._wake
            self.plots.append(plot)
            grid.addWidget(plot, i // columns, i % columns)
            for j, (name, label) in enumerate(spec.metrics):
                self._route[name] = (plot, j, label)
        self._runs: dict[str, int] = {}
        self._run_labels: dict[str, str] = {}
        self._methods: dict[str, str] = {}
        self.timer = QTimer(self)  # single-shot: armed only while there is data to draw
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.refresh)
        self.last_redraw_s = 0.0  # the last redraw's GUI-thread CPU, paints included
        self._next_redraw = 0.0  # perf_counter() time before which no data redraw starts
        self._charging: tuple[float, float] | None = None  # (when, thread CPU) of a redraw
        self.overlay = overlay
        self.apply_view_options()

    @property
    def overlay(self) -> bool:
        return self._overlay

    @overlay.setter
    def overlay(self, value: bool) -> None:
        """Several runs (a colour per run) or one (a colour per metric): curves already
        drawn are recoloured, not reloaded."""
        self._overlay = value
        for plot in self.plots:
            plot.overlay = value
            for key, series in plot.series.items():
                run = key.split("\x00")[0]
                colour, label = self._colour_and_label(run, series.order[1])
                plot.recolour(key, colour, label)
        self._show_runs_legend()

    def _colour_and_label(self, run: str, j: int) -> tuple[str, str]:
        """A curve's colour and run label: by run in an overlay, by metric otherwise."""
        if self.overlay:
            return self.run_colour(run), self._run_labels.get(run, run)
        return PALETTE[j % len(PALETTE)], ""

    @Slot()
    def apply_view_options(self) -> None:
        """The controls changed: every plot redraws with the new smoothing / axis / range."""
        for plot in self.plots:
            plot.set_view_options(
                self.controls.value(),
                self.controls.log_y.isChecked(),
                self.controls.ignore_outliers.isChecked(),
            )
        self._next_redraw = 0.0  # a user's change is drawn at once

    def _wake(self) -> None:
        if not self.timer.isActive():
            self._arm(time.perf_counter())

    def _arm(self, now: float) -> None:
        wait = max(REDRAW_MS / 1000, self._next_redraw - now)
        self.timer.start(max(1, round(wait * 1000)))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self._next_redraw = 0.0  # hidden plots kept their changes: draw them now,
        self._wake()  # as the user looks, not after the budget of the last redraw

    def run_colour(self, run: str) -> str:
        """The run's colour: the first free one, kept while the run is shown."""
        if run not in self._runs:
            taken = set(self._runs.values())
            self._runs[run] = next(i for i in range(len(self._runs) + 1) if i not in taken)
        return PALETTE[self._runs[run] % len(PALETTE)]

    def _series_key(self, run: str, name: str) -> tuple[MetricPlot, str] | None:
        route = self._route.get(name)
        if route is None:
            return None
        plot, j, label = route
        same = SAME_CURVE.get(self._methods.get(run, ""), {})
        if name in same:
            return None
        key = f"{run}\x00{name}"
        if key not in plot.series:
            merged = [self._route[m][2] for m, into in same.items() if into == name]
            if merged:
                label = f"{label} (= {', '.join(merged)})"
            self.run_colour(run)  # registers the run's position
            colour, run_label = self._colour_and_label(run, j)
            plot.ensure_series(
                key, label, colour, STYLES[j % len(STYLES)], (self._runs[run], j), run_label
            )
            self._show_runs_legend()
        return plot, key

    def _show_runs_legend(self) -> None:
        if not self.overlay or len(self._runs) < 2:
            self.runs_legend.setText("")
            return
        self.runs_legend.setText(
            " &nbsp; ".join(
                f"<span style='color:{self.run_colour(run)}'>■</span>&nbsp;"
                f"{html.escape(self._run_labels.get(run, run))}"
                for run in self._runs
            )
        )

    def _show_outliers(self) -> None:
        """Name the curves a plot left out of its y range (and how to see them)."""
        where: dict[str, list[str]] = {}
        for plot in self.plots:
            for series in plot.outliers:
                where.setdefault(series.run or series.metric, []).append(plot.title)
        if not where:
            self.outlier_note.setText("")
            self.outlier_note.setToolTip("")
            return
        names = ", ".join(where)
        self.outlier_note.setText(f"⚠ out of view: {names}")
        self.outlier_note.setToolTip(
            "Left out of the y range as outliers (far beyond the other curves): "
            + "; ".join(f"{name} in {', '.join(dict.fromkeys(p))}" for name, p in where.items())
            + ". Untick “Ignore outliers”, tick “Log y” or zoom out to see them."
        )

    def remove_run(self, run: str) -> None:
        """Take a run's curves away; the other runs keep their colours."""
        for plot in self.plots:
            plot.remove_series([k for k in plot.series if k.split("\x00")[0] == run])
        self._runs.pop(run, None)
        self._run_labels.pop(run, None)
        self._methods.pop(run, None)
        self._show_runs_legend()
        self._next_redraw, self._charging = 0.0, None

    def set_run_label(self, run: str, label: str) -> None:
        """Label a run's curves (used when several runs overlay)."""
        self._run_labels[run] = label

    def set_run_method(self, run: str, method: str) -> None:
        """The run's `distill.method`: metrics that equal another for it are drawn once
        (SAME_CURVE). Call before its metrics arrive."""
        self._methods[run] = method

    def add_metrics(self, step: int, values: dict[str, float], run: str = "") -> None:
        for name, value in values.items():
            found = self._series_key(run, name)
            if found is not None:
                found[0].append(found[1], float(step), float(value))

    def add_history(self, run: str, name: str, steps: np.ndarray, values: np.ndarray) -> None:
        """Bulk-load a stored curve (a finished run, or the start of a tailed one)."""
        found = self._series_key(run, name)
        if found is not None and len(steps):
            found[0].extend(found[1], np.asarray(steps, float), np.asarray(values, float))

    def load_stored(self, ws: Workspace, run_id: int, run: str = "", after_rowid: int = 0) -> int:
        """Add the metrics of stored run `run_id` written after `after_rowid` (all of them
        the first time) as run `run`; returns the rowid to pass next time (tailing a run
        that another thread or process writes).

        A whole run is read a metric at a time through the (run, name, step) key as plain
        tuples straight into arrays: a few runs of 10k steps are 350k rows, which row
        objects and per-row Python took most of a second for. Rows written after the
        first query wait for the next call (`last`), so none is read twice or skipped.
        """
        cur = ws.db.cursor()
        cur.row_factory = None
        last = cur.execute(
            "SELECT max(rowid) FROM run_metrics WHERE run_id=?", (run_id,)
        ).fetchone()[0]
        if last is None or last <= after_rowid:
            return after_rowid
        if after_rowid:  # a tail: few rows, by the (run, rowid) index
            new: dict[str, list[tuple[float, float]]] = {}
            for name, step, value in cur.execute(
                "SELECT name, step, value FROM run_metrics WHERE run_id=? AND rowid>? "
                "AND rowid<=? ORDER BY rowid",
                (run_id, after_rowid, last),
            ):
                new.setdefault(name, []).append((step, value))
            curves = {name: np.array(points, dtype=float) for name, points in new.items()}
        else:
            curves = {}
            names = cur.execute("SELECT DISTINCT name FROM run_metrics WHERE run_id=?", (run_id,))
            for (name,) in names.fetchall():
                # "+rowid": filter on it, but walk the (run, name, step) key, already sorted
                rows = cur.execute(
                    "SELECT step, value FROM run_metrics WHERE run_id=? AND name=? "
                    "AND +rowid<=? ORDER BY step",
                    (run_id, name, last),
                ).fetchall()
                flat = itertools.chain.from_iterable(rows)
                curves[name] = np.fromiter(flat, float, count=2 * len(rows)).reshape(-1, 2)
        for name, points in curves.items():
            self.add_history(run, name, points[:, 0], points[:, 1])
        return last

    @Slot()
    def refresh(self) -> None:
        """Redraw the plots whose data changed, within a budget of the GUI thread's CPU.

        New data arms a single-shot timer (REDRAW_MS). A redraw is `setData` now, then scene
        updates and paints when the event loop gets to them; everything the GUI thread
        spends from the redraw to the next tick is charged to it, and the next redraw
        waits REDRAW_BUDGET_FACTOR x that (at most MAX_REDRAW_WAIT_S). Painting holds the
        GIL, and on a small machine it takes a core from the training loop, so a run in a
        worker thread of this process would otherwise lose that time on every tick.
        Zooming, panning, a change of the controls and a new selection draw at once; only
        new data waits. With nothing left to draw, the board does not tick at all.
        """
        now, cpu = time.perf_counter(), time.thread_time()
        self._settle(cpu)
        if now >= self._next_redraw:
            changed = [plot for plot in self.plots if plot.refresh()]
            if changed:
                self._show_outliers()
                self._charging = (now, cpu)
                self.last_redraw_s = time.thread_time() - cpu  # setData only, until settled
                self._next_redraw = now + min(
                    REDRAW_BUDGET_FACTOR * self.last_redraw_s, MAX_REDRAW_WAIT_S
                )
                self.timer.start(REDRAW_MS)  # the tick that settles this redraw's cost
                return
        if any(plot.pending() and plot.isVisible() for plot in self.plots):
            self._arm(now)

    def _settle(self, cpu: float) -> None:
        """If the previous tick redrew, charge it what the GUI thread spent since."""
        if self._charging is not None:
            at, cpu0 = self._charging
            self._charging = None
            self.last_redraw_s = cpu - cpu0
            self._next_redraw = at + min(
                REDRAW_BUDGET_FACTOR * self.last_redraw_s, MAX_REDRAW_WAIT_S
            )

    def flush(self) -> None:
        """Draw whatever is pending now, budget or not (a run's last points)."""
        self._settle(time.thread_time())
        self._next_redraw = 0.0
        self.refresh()

    def clear(self) -> None:
        """Remove every curve (a new selection): what comes next is drawn at once."""
        for plot in self.plots:
            plot.clear_series()
        self._runs.clear()
        self._run_labels.clear()
        self._methods.clear()
        self._show_runs_legend()
        self._next_redraw, self._charging = 0.0, None  # loading the next is no redraw's cost

    def plot_for(self, name: str) -> MetricPlot | None:
        route = self._route.get(name)
        return route[0] if route else None

    def point_count(self, name: str | None = None) -> int:
        if name is None:
            return sum(p.point_count() for p in self.plots)
        route = self._route.get(name)
        if route is None:
            return 0
        return sum(s.buffer.n for k, s in route[0].series.items() if k.endswith("\x00" + name))
