"""Live metric plots (pyqtgraph) that stay smooth with the whole run visible.

Each curve is created once. Points go into a numpy buffer that grows by doubling; the
curve gets `setData` only when it changed, from one timer per board (~50 ms after new data,
and within a budget of the GUI thread's CPU, see `PlotBoard.refresh`), never per incoming
point; a board with nothing new, or hidden behind another tab, does not draw at all. Nothing is ever dropped (no sliding window): a long curve is drawn through
a peak-preserving level-of-detail pyramid (each bucket's min and max, kept up to date
incrementally), so a million-point run costs a few thousand drawn points per frame, and
zooming in brings back full detail. Antialiasing is used only for curves short enough to
afford it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer, Slot
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QGraphicsItem, QGridLayout, QWidget

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
ANTIALIAS_BELOW = 2000  # drawn points; antialiased zig-zags cost far more to rasterise


class _Grow:
    """A float64 array that grows by doubling."""

    def __init__(self, capacity: int = 256) -> None:
        self.a = np.empty(capacity)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.a):
            new = np.empty(max(need, 2 * len(self.a)))
            new[: self.n] = self.a[: self.n]
            self.a = new
        self.a[self.n : need] = values
        self.n = need

    def view(self) -> np.ndarray:
        return self.a[: self.n]


class SeriesBuffer:
    """A curve's points (x/y arrays that grow by doubling) and its level-of-detail pyramid.

    `display(x0, x1)` returns what to draw for the x range [x0, x1]: the points themselves
    when there are few, else the min and max of each bucket of the finest level that keeps
    the count under MAX_DRAWN (peak decimation: spikes are never lost).
    """

    def __init__(self, capacity: int = 256) -> None:
        self._x, self._y = _Grow(capacity), _Grow(capacity)
        self._levels: dict[int, tuple[_Grow, _Grow, _Grow]] = {}
        self.sorted = True

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

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self._x.view(), self._y.view()

    def clear(self) -> None:
        self._x.n = self._y.n = 0
        self._levels.clear()
        self.sorted = True

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


@dataclass
class _Series:
    curve: pg.PlotDataItem
    label: str = ""
    order: tuple = ()  # legend position: (run, metric)
    buffer: SeriesBuffer = field(default_factory=SeriesBuffer)
    dirty: bool = False
    dense: bool = False


def _theme_colours() -> tuple[str, str]:
    pal = QApplication.palette()
    return (
        pal.color(QPalette.ColorRole.Base).name(),
        pal.color(QPalette.ColorRole.Text).name(),
    )


def _legend_brush(background: str) -> QColor:
    colour = QColor(background)
    colour.setAlpha(210)  # curves show through faintly; labels stay legible
    return colour


class MetricPlot(pg.PlotWidget):
    """One plot with named curves; call `refresh()` (the board's timer does) to redraw."""

    def __init__(self, title: str, y_label: str = "", parent: QWidget | None = None) -> None:
        background, foreground = _theme_colours()
        super().__init__(parent=parent, background=background)
        self.title = title
        item = self.getPlotItem()
        item.setTitle(title, color=foreground, size="10pt")
        item.showGrid(x=True, y=True, alpha=0.15)
        item.setLabel("bottom", "step", color=foreground)
        if y_label:
            item.setLabel("left", y_label, color=foreground)
        for axis in ("left", "bottom"):
            ax = item.getAxis(axis)
            ax.setPen(pg.mkPen(foreground))
            ax.setTextPen(pg.mkPen(foreground))
            # Major ticks only: minor grid lines cost most of a frame to rasterise.
            ax.setStyle(maxTickLevel=0)
            # No "(x1e-3)" prefixes: the tick labels say it, and re-rendering the axis label
            # (rich text) on every range change was a fair share of a redraw's cost.
            ax.enableAutoSIPrefix(False)
            # Replay the axis (ticks, labels, grid) from a pixmap unless its range changed:
            # re-drawing its text was the largest part of a repaint.
            ax.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.legend = item.addLegend(
            offset=(-8, 8), labelTextColor=foreground, brush=_legend_brush(background)
        )
        self.series: dict[str, _Series] = {}
        self.setMinimumHeight(150)
        self.empty = pg.TextItem("no data yet", color="#888888", anchor=(0.5, 0.5))
        self.empty.setParentItem(item.getViewBox())
        vb = item.getViewBox()
        vb.sigResized.connect(self._place_empty)
        vb.sigXRangeChanged.connect(self._on_range_changed)
        vb.sigResized.connect(self._on_resized)
        # x follows the data here (`_follow_x`), not through pyqtgraph's auto range, which
        # refits (and re-lays out the axis and grid) on every frame of a growing run.
        vb.enableAutoRange(x=False)
        self._follow = True
        self._fitted: tuple[float, float] | None = None  # the x range set while following
        self._setting_range = False
        self._place_empty()
        self._range_dirty = False
        self._is_empty: bool | None = None
        self._set_empty(True)
        self.on_change: Callable[[], None] | None = None  # the board's: wake its timer

    def _on_range_changed(self) -> None:
        if not self._setting_range:  # zoomed or panned (not by _follow_x): stop following,
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
        if self._follow and self._fitted is not None:
            self._set_x(*self._fitted)  # the padding depends on the view's size

    def _set_x(self, lo: float, hi: float) -> None:
        self._setting_range = True
        try:
            self.getPlotItem().getViewBox().setXRange(lo, hi)  # padding by size, as auto does
        finally:
            self._setting_range = False

    def _data_x(self) -> tuple[float, float] | None:
        lo = hi = None
        for series in self.series.values():
            b = series.buffer
            if not b.n:
                continue
            x = b.view()[0]
            a, z = (x[0], x[-1]) if b.sorted else (x.min(), x.max())
            lo, hi = (a, z) if lo is None else (min(lo, a), max(hi, z))
        return None if lo is None else (float(lo), float(hi))

    def _follow_x(self) -> None:
        """Keep the whole run in view. A growing run extends the range by a tenth of its
        span at a time, so the axis and grid are laid out again every few dozen frames
        rather than on every one."""
        extent = self._data_x()
        if extent is None:
            return
        lo, hi = extent
        fitted = self._fitted
        if fitted is not None and fitted[0] == lo and hi <= fitted[1]:
            return
        if fitted is not None and fitted[0] == lo and hi > fitted[1]:
            hi = hi + 0.1 * (hi - lo)  # growing: leave room for what comes next
        if hi <= lo:
            hi = lo + 1.0
        self._fitted = (lo, hi)
        self._set_x(lo, hi)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Follow the system palette when it switches between light and dark."""
        from PySide6.QtCore import QEvent

        kinds = (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
        if event.type() in kinds and hasattr(self, "series"):  # not during construction
            self.apply_theme()
        super().changeEvent(event)

    def apply_theme(self) -> None:
        background, foreground = _theme_colours()
        self.setBackground(background)
        item = self.getPlotItem()
        item.setTitle(self.title, color=foreground, size="10pt")
        for axis in ("left", "bottom"):
            ax = item.getAxis(axis)
            ax.setPen(pg.mkPen(foreground))
            ax.setTextPen(pg.mkPen(foreground))
        self.legend.setBrush(_legend_brush(background))
        self.legend.setLabelTextColor(foreground)

    def _set_empty(self, empty: bool) -> None:
        """An empty plot says so, with no made-up tick values (0.2 ... 0.8) on its axes."""
        if self._is_empty == empty:
            return  # restyling an axis re-renders it: only on a change
        self._is_empty = empty
        self.empty.setVisible(empty)
        for axis in ("left", "bottom"):
            self.getPlotItem().getAxis(axis).setStyle(showValues=not empty)

    def _place_empty(self) -> None:
        rect = self.getPlotItem().getViewBox().boundingRect()
        self.empty.setPos(rect.center())

    def set_empty_text(self, text: str) -> None:
        """What an empty plot says (e.g. "no GPU: training on the CPU")."""
        self.empty.setText(text)

    def ensure_series(
        self, key: str, label: str, colour: str, style: str = "solid", order: tuple = ()
    ) -> _Series:
        """The curve `key`, created on first use; the legend lists curves by `order`."""
        series = self.series.get(key)
        if series is None:
            pen = pg.mkPen(QColor(colour), width=1.6)
            if style == "dash":
                pen.setStyle(pg.QtCore.Qt.PenStyle.DashLine)
            elif style == "dot":
                pen.setStyle(pg.QtCore.Qt.PenStyle.DotLine)
            curve = self.getPlotItem().plot(name=label, pen=pen)
            series = self.series[key] = _Series(curve, label, order)
            ordered = sorted(self.series.values(), key=lambda s: s.order)
            if ordered[-1] is not series:  # it belongs before others: rebuild the legend
                self.legend.clear()
                for s in ordered:
                    self.legend.addItem(s.curve, s.label)
            self.legend.setVisible(len(self.series) > 1)  # one curve: the title says it
        return series

    def append(self, key: str, x: float, y: float) -> None:
        series = self.series[key]
        if not math.isfinite(y):
            return
        series.buffer.append(x, y)
        series.dirty = True
        self._changed()

    def extend(self, key: str, xs: np.ndarray, ys: np.ndarray) -> None:
        series = self.series[key]
        keep = np.isfinite(ys)
        series.buffer.extend(xs[keep], ys[keep])
        series.dirty = True
        self._changed()

    def refresh(self) -> int:
        """setData on the curves that changed (or all, after a zoom); how many were redrawn.

        A hidden plot (another tab) draws nothing; its data waits, still marked changed."""
        if not self.isVisible():
            return 0
        vb = self.getPlotItem().getViewBox()
        if vb.state["autoRange"][0]:  # the "A" button or View All: follow the data again
            vb.enableAutoRange(x=False)
            self._follow, self._fitted, self._range_dirty = True, None, True
        x0, x1 = (None, None) if self._follow else vb.viewRange()[0]
        redrawn = 0
        for series in self.series.values():
            if series.dirty or self._range_dirty:
                x, y = series.buffer.display(x0, x1)
                dense = len(x) >= ANTIALIAS_BELOW
                if dense != series.dense:  # a hairline without antialiasing for dense curves
                    series.dense = dense
                    pen = pg.mkPen(series.curve.opts["pen"])
                    pen.setWidthF(1.0 if dense else 1.6)
                    series.curve.setPen(pen)
                series.curve.setData(x, y, antialias=not dense, skipFiniteCheck=True)
                series.dirty = False
                redrawn += 1
        self._range_dirty = False
        if redrawn:
            if self._follow:
                self._follow_x()
            self._set_empty(self.point_count() == 0)
        return redrawn

    def point_count(self) -> int:
        return sum(s.buffer.n for s in self.series.values())

    def clear_series(self) -> None:
        for series in self.series.values():
            self.getPlotItem().removeItem(series.curve)
        self.series.clear()
        self.legend.clear()
        self.legend.setVisible(False)
        self._follow, self._fitted = True, None
        self._set_empty(True)


@dataclass(frozen=True)
class PlotSpec:
    """Which metrics a plot shows: (metric name, legend label) pairs, first match wins."""

    title: str
    metrics: tuple[tuple[str, str], ...]
    y_label: str = ""
    log_y: bool = False


# The trainer's metric names (kdstudio.distill) and where each is drawn.
TRAIN_PLOTS = (
    PlotSpec("Loss", (("loss", "total"), ("ce", "CE"), ("kd", "KD")), "loss"),
    PlotSpec("Eval loss", (("eval_loss", "eval"),), "loss"),
    PlotSpec("Learning rate", (("lr", "lr"),)),
    PlotSpec("Grad norm", (("grad_norm", "grad norm"),)),
    PlotSpec("Tokens / s", (("tokens_per_s", "tokens/s"),)),
    PlotSpec("GPU memory", (("gpu_mem_gb", "GiB"),), "GiB"),
)
STYLES = ("solid", "dash", "dot")
# Metrics that equal another for a method, drawn once: with SFT the loss is the CE, and a CE
# curve would hide exactly under the total. The total's legend says so instead.
SAME_CURVE = {"sft": {"ce": "loss"}}


class PlotBoard(QWidget):
    """A grid of MetricPlots fed with metrics by name; one timer redraws what changed.

    With several runs (`run` keys), each run gets one colour and each metric within a
    plot one line style, so curves of several runs overlay legibly.
    """

    def __init__(
        self,
        specs: tuple[PlotSpec, ...] = TRAIN_PLOTS,
        columns: int = 3,
        *,
        overlay: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.overlay = overlay
        self.specs = specs
        self.plots: list[MetricPlot] = []
        self._route: dict[str, tuple[MetricPlot, int, str]] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        for i, spec in enumerate(specs):
            plot = MetricPlot(spec.title, spec.y_label)
            if spec.log_y:
                plot.getPlotItem().setLogMode(y=True)
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

    def _wake(self) -> None:
        if not self.timer.isActive():
            self._arm(time.perf_counter())

    def _arm(self, now: float) -> None:
        wait = max(REDRAW_MS / 1000, self._next_redraw - now)
        self.timer.start(max(1, round(wait * 1000)))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self._wake()  # hidden plots kept their changes: draw them now

    def run_colour(self, run: str) -> str:
        if run not in self._runs:
            self._runs[run] = len(self._runs)
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
            if self.overlay:
                colour, style = self.run_colour(run), STYLES[j % len(STYLES)]
                text = f"{self._run_labels.get(run, run)} {label}".strip()
            else:
                colour, style, text = PALETTE[j % len(PALETTE)], STYLES[j % len(STYLES)], label
            self.run_colour(run)  # registers the run's position
            plot.ensure_series(key, text, colour, style, order=(self._runs[run], j))
        return plot, key

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

    @Slot()
    def refresh(self) -> None:
        """Redraw the plots whose data changed, within a budget of the GUI thread's CPU.

        New data arms a single-shot timer (REDRAW_MS). A redraw is `setData` now, then scene
        updates and paints when the event loop gets to them; everything the GUI thread
        spends from the redraw to the next tick is charged to it, and the next redraw
        waits REDRAW_BUDGET_FACTOR x that (at most MAX_REDRAW_WAIT_S). Painting holds the
        GIL, and on a small machine it takes a core from the training loop, so a run in a
        worker thread of this process would otherwise lose that time on every tick.
        Zooming and panning repaint at once; only new data waits. With nothing left to
        draw, the board does not tick at all.
        """
        now, cpu = time.perf_counter(), time.thread_time()
        self._settle(cpu)
        if now >= self._next_redraw:
            changed = [plot for plot in self.plots if plot.refresh()]
            if changed:
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
        for plot in self.plots:
            plot.clear_series()
        self._runs.clear()
        self._run_labels.clear()
        self._methods.clear()

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
