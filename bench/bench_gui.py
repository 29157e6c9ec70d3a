"""Benchmark: does the window stay smooth while it trains and collects, and cost nothing?

    python bench/bench_gui.py                 # the full set (a few minutes on a CPU)
    python bench/bench_gui.py --quick         # smaller everything

1. UI lateness: a 10 ms QTimer on the GUI thread, while (a) a student trains in the window
   (Train panel, QThread) and (b) a collection runs at concurrency 64 (Collect panel) against
   the loopback OpenAI-protocol server in another process. Lateness = interval - 10 ms.
   Target: p99 < 50 ms.
2. Throughput: the same training config run from the window and from `kdstudio train`
   (a subprocess), steps/s as the trainer measures it, in alternating pairs (median of the
   pairs' ratios). Target: window / CLI >= 0.95. The window runs its real event loop
   while it waits (as a user's window does), not a processEvents() spin.
3. Plotting: a curve of 1,000,000 points getting 1,000 more at 10 Hz; time per frame
   (setData + a full repaint). Target: < 16 ms. Beside it, pyqtgraph's own
   `setDownsampling(mode="peak")` + `setClipToView(True)` on the same data (the reference
   the plots module's own level-of-detail pyramid was kept against).
4. Overlay: 5 stored runs of 10,000 steps selected in Runs, until every curve is painted.
   Target: < 0.5 s. Beside it, the same curves as plain pyqtgraph items with its own
   downsampling and legend.

`--only plots` (or training, collecting, table) runs some of them.

Runs offscreen unless a display is set (use `xvfb-run -a` for a real X server).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # kdstudio, and the test support
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
KEY_ENV = "KDSTUDIO_BENCH_KEY"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class LatenessProbe:
    """A 10 ms QTimer on the GUI thread recording how late each tick fires (seconds)."""

    def __init__(self, interval_ms: int = 10) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.samples: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.tick)
        self.last = 0.0
        self.recording = False

    def start(self) -> None:
        self.last = time.perf_counter()
        self.recording = True
        self.timer.start()

    def tick(self) -> None:
        now = time.perf_counter()
        if self.recording:
            self.samples.append(max(0.0, now - self.last - self.interval))
        self.last = now

    def stop(self) -> list[float]:
        self.timer.stop()
        self.recording = False
        return self.samples

    def figures(self) -> tuple[float, float, float, int]:
        ms = [s * 1000 for s in self.samples]
        return percentile(ms, 0.5), percentile(ms, 0.99), max(ms) if ms else float("nan"), len(ms)


def wait(app, predicate, timeout: float, poll_ms: int = 25) -> bool:
    """Run the Qt event loop, as the studio runs it, until `predicate()` or the timeout.

    A real event loop (blocked in the OS until an event or timer is due), not a
    processEvents()/sleep spin: a 1 kHz spin costs the GUI thread ~10% of a core, which
    no user's window spends, and would be charged to the window in the throughput ratio.
    """
    from PySide6.QtCore import QEventLoop, QTimer

    if predicate():
        return True
    loop = QEventLoop()
    end = time.monotonic() + timeout

    def check() -> None:
        if predicate() or time.monotonic() >= end:
            loop.quit()

    timer = QTimer()
    timer.setInterval(poll_ms)
    timer.timeout.connect(check)
    timer.start()
    loop.exec()
    timer.stop()
    return predicate()


def run_until(app, signal, done, timeout: float = 3600) -> None:
    """Run the event loop until `signal` fires (or `done()` already holds): no polling."""
    from PySide6.QtCore import QEventLoop, QTimer

    if done():
        return
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()
    signal.disconnect(loop.quit)


def build(root: Path, rows: int, hidden: int, layers: int):
    from support.gui import write_prompts

    from kdstudio.data import import_dataset
    from kdstudio.demo.tiny import make_model, make_tokenizer
    from kdstudio.workspace import Workspace

    ws = Workspace.open(root / "ws")
    import_dataset(
        ws, write_prompts(root / "prompts.jsonl", rows), name="prompts", as_collection="answers"
    )
    texts = [f"What is {a} + {b}? The answer is {a + b}." for a in range(10) for b in range(10)]
    tok = make_tokenizer(root / "tok", texts, vocab_size=512)
    student = make_model(root / "student", tok, layers=layers, hidden=hidden)
    return ws, student


def train_config(student: Path, steps: int, name: str, device: str) -> dict:
    return {
        "student": {"path": str(student)},
        "data": {"collection": "answers", "eval_fraction": 0.0},
        "optim": {"max_steps": steps, "batch_size": 16, "lr": 1e-3},
        "run": {
            "name": name,
            "log_every": 5,
            "eval_every": 0,
            "checkpoint_every": 0,
            "device": device,
        },
    }


def steps_per_s(ws, name: str) -> float:
    from kdstudio.distill import runs

    run = runs.get_run(ws, name)
    return run.summary["steps"] / run.summary["elapsed"]


def bench_training(app, window, ws, student, steps: int, device: str, pairs: int) -> dict:
    """`pairs` x (the run in the window, then the same config by `kdstudio train`).

    Runs alternate so that a slow patch of the machine hits both sides; the ratio reported
    is the median of the pairs' ratios. UI lateness is sampled in one more window run
    before them, the 10 ms probe being load of its own.
    """
    import torch  # noqa: F401 - imported before measuring, as a warm window has it
    import transformers  # noqa: F401

    from kdstudio.config import dumps_toml
    from kdstudio.distill.config import TrainConfig

    panel = window.show_panel("train")
    probe = LatenessProbe()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gui_share: list[float] = []  # GUI-thread CPU / wall time during each window run

    def in_window(name: str, measure_lateness: bool) -> float:
        panel.set_config(TrainConfig.from_dict(train_config(student, steps, name, device)))
        job = panel.start()
        assert job is not None, panel.message.text
        wait(app, lambda: panel.progress.value() > 0, 300)  # set-up (model load) is not the loop
        if measure_lateness:
            probe.start()
        t0, c0 = time.perf_counter(), time.thread_time()
        run_until(app, job.ended, lambda: not job.running)
        if not measure_lateness:
            gui_share.append((time.thread_time() - c0) / (time.perf_counter() - t0))
        probe.stop()
        assert job.outcome == "succeeded", job.error
        return steps_per_s(ws, name)

    # UI lateness: one run with the 10 ms probe ticking (the probe is load of its own, so
    # the throughput pairs below run without it).
    in_window("window-lateness", True)
    window_rates, cli_rates = [], []
    for i in range(pairs):
        window_rates.append(in_window(f"window-run-{i}", False))
        name = f"cli-run-{i}"
        cfg = ws.root.parent / f"{name}.toml"
        cfg.write_text(dumps_toml(train_config(student, steps, name, device)))
        cmd = [sys.executable, "-m", "kdstudio", "--workspace", str(ws.root), "train"]
        cmd += ["--config", str(cfg), "--quiet"]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        cli_rates.append(steps_per_s(ws, name))
        print(
            f"  pair {i + 1}: window {window_rates[-1]:.2f}, CLI {cli_rates[-1]:.2f} steps/s",
            file=sys.stderr,
        )
    p50, p99, worst, n = probe.figures()
    ratios = [w / c for w, c in zip(window_rates, cli_rates, strict=True)]
    return {
        "p50": p50,
        "p99": p99,
        "max": worst,
        "ticks": n,
        "window": statistics.median(window_rates),
        "cli": statistics.median(cli_rates),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "gui_cpu_share": statistics.median(gui_share),
    }


def bench_collecting(app, window, ws, rows: int) -> dict:
    from kdstudio.collect import CollectConfig
    from kdstudio.config import TeacherConfig

    os.environ[KEY_ENV] = "sk-bench"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "support.openai_server",
            "--latency",
            "0.05",
            "--api-key",
            "sk-bench",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    try:
        url = server.stdout.readline().strip()
        ws.add_teacher(
            TeacherConfig(
                name="loop",
                base_url=url,
                model="teacher-1",
                key_source="env",
                key_env=KEY_ENV,
                price_in=1,
                price_out=2,
            ),
            replace=True,
        )
        panel = window.show_panel("collect")
        panel.refresh()
        probe = LatenessProbe()
        t0 = time.perf_counter()
        job = panel.launch(
            CollectConfig(
                teacher="loop",
                dataset="prompts",
                concurrency=64,
                top_logprobs=5,
                max_tokens=24,
                limit=rows,
            )
        )
        probe.start()
        run_until(app, job.ended, lambda: not job.running)
        probe.stop()
        elapsed = time.perf_counter() - t0
        assert job.outcome == "succeeded", job.error
    finally:
        server.terminate()
        server.wait(10)
    p50, p99, worst, n = probe.figures()
    return {"p50": p50, "p99": p99, "max": worst, "ticks": n, "rate": rows / elapsed}


def bench_table(app, window, ws, root: Path, rows: int) -> dict:
    """Open a big dataset in the Datasets panel, page deep into it, search it."""
    from kdstudio.data import import_dataset

    words = ["model", "teacher", "student", "token", "loss", "batch", "prompt", "answer"]
    path = root / "big.jsonl"
    with path.open("w") as f:
        for i in range(rows):
            text = " ".join(words[(i * 7 + k) % len(words)] for k in range(12))
            f.write(json.dumps({"prompt": f"{text} number {i}"}) + "\n")
    t0 = time.perf_counter()
    import_dataset(ws, path, name="big")
    imported = time.perf_counter() - t0
    panel = window.show_panel("datasets")
    t0 = time.perf_counter()
    panel.refresh()
    panel.select_dataset("big")
    app.processEvents()
    opened = time.perf_counter() - t0
    assert panel.model.total == rows
    deep = []
    for offset in (rows // 2, rows - 1000, rows - panel.model.page_size):
        t0 = time.perf_counter()
        page = panel.model._fetch(offset, panel.model.page_size)
        deep.append(time.perf_counter() - t0)
        assert page and page[0].idx == offset
    t0 = time.perf_counter()
    for _ in range(20):
        panel.table.scrollToBottom()
        app.processEvents()
    scrolled = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    panel.search.setText(f"number {rows // 2}")
    panel.apply_search()
    app.processEvents()
    searched = time.perf_counter() - t0
    return {
        "rows": rows,
        "import_s": imported,
        "open_ms": opened * 1000,
        "deep_page_ms": max(deep) * 1000,
        "scroll_fetch_ms": scrolled * 1000,
        "search_ms": searched * 1000,
        "matches": panel.model.total,
    }


def _frames(app, widget, feed, points: int, frames: int) -> dict:
    """`frames` frames at 10 Hz of 1,000 new points each: `feed` (the plot's own update),
    then the event loop's turn, which paints it; wall and GUI-thread CPU per frame."""
    import numpy as np

    times, cpu = [], []
    step = points
    for _ in range(frames):
        new = np.arange(step, step + 1000, dtype=float)
        step += 1000
        t0, c0 = time.perf_counter(), time.thread_time()
        feed(new, np.sin(new / 5000))
        app.processEvents()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
        time.sleep(max(0.0, 0.1 - times[-1] / 1000))  # 10 Hz
    return {
        "mean": statistics.mean(times),
        "p99": percentile(times, 0.99),
        "max": max(times),
        "cpu_mean": statistics.mean(cpu),
        "cpu_p99": percentile(cpu, 0.99),
        "points": step,
    }


def bench_plot(app, points: int, frames: int) -> dict:
    """A curve of `points` getting 1,000 more at 10 Hz, the whole run in view: kdstudio's
    MetricPlot (its level-of-detail pyramid) beside pyqtgraph's own peak downsampling and
    clip-to-view on the same data, same pen, same size."""
    import numpy as np
    import pyqtgraph as pg

    from kdstudio.gui.plots import THIN, MetricPlot, _Grow

    xs = np.arange(points, dtype=float)
    ys = np.sin(xs / 5000) + np.random.default_rng(0).normal(0, 0.1, points)

    plot = MetricPlot("1M points")
    plot.resize(900, 500)
    plot.show()
    plot.ensure_series("loss", "loss", "#4c8bf5")
    plot.extend("loss", xs, ys)
    plot.refresh()
    plot.viewport().repaint()
    app.processEvents()

    def feed_kdstudio(x, y):
        plot.extend("loss", x, y)
        plot.refresh()  # the view follows the data: the whole run stays visible

    ours = _frames(app, plot, feed_kdstudio, points, frames)
    plot.close()

    # pyqtgraph's own: the whole buffer handed over each frame, reduced by pyqtgraph
    # (peak: each bucket's min and max, the bucket size from the view's width).
    widget = pg.PlotWidget()
    widget.resize(900, 500)
    widget.show()
    curve = widget.plot(pen=pg.mkPen("#4c8bf5", width=THIN))
    curve.setDownsampling(auto=True, method="peak")
    curve.setClipToView(True)
    bx, by = _Grow(), _Grow()
    bx.extend(xs)
    by.extend(ys)
    curve.setData(bx.view(), by.view())
    widget.viewport().repaint()
    app.processEvents()

    def feed_pyqtgraph(x, y):
        bx.extend(x)
        by.extend(y)
        curve.setData(bx.view(), by.view(), skipFiniteCheck=True)

    theirs = _frames(app, widget, feed_pyqtgraph, points, frames)
    widget.close()
    return {"kdstudio": ours, "pyqtgraph": theirs}


OVERLAY_METRICS = ("loss", "ce", "kd", "eval_loss", "lr", "grad_norm", "tokens_per_s")


def bench_overlay(app, window, ws, runs_n: int = 5, steps: int = 10_000, repeats: int = 3) -> dict:
    """Select `runs_n` stored runs of `steps` steps in the Runs panel: seconds until every
    curve is drawn and painted. Beside it, pyqtgraph's own way: the same metrics read with
    the core's `metric_series`, one PlotDataItem each with peak downsampling, clip-to-view and a legend,
    in the same six plots."""
    import numpy as np
    import pyqtgraph as pg
    from support.runs import make_curve_run

    from kdstudio.distill import runs
    from kdstudio.gui.plots import THIN, TRAIN_PLOTS

    made = [
        make_curve_run(ws, f"overlay-{i}", steps=steps, seed=i, diverge_at=None)
        for i in range(runs_n)
    ]
    ids = {r.id for r in made}
    panel = window.show_panel("runs")
    panel.refresh()
    board = panel.board
    ours = []
    for _ in range(repeats):
        panel.table.clearSelection()
        wait(app, lambda: not board.point_count(), 5)
        t0 = time.perf_counter()
        selection = panel.table.selectionModel()
        for i, run in enumerate(panel.model.rows):
            if run.id in ids:
                selection.select(
                    panel.model.index(i, 0),
                    selection.SelectionFlag.Select | selection.SelectionFlag.Rows,
                )
        wait(
            app,
            lambda: board.point_count() > 0 and not any(p.pending() for p in board.plots),
            60,
            poll_ms=1,
        )
        for plot in board.plots:
            plot.viewport().repaint()
        ours.append(time.perf_counter() - t0)

    theirs = []
    for _ in range(repeats):
        holder = QWidgetGrid(len(TRAIN_PLOTS))
        t0 = time.perf_counter()
        route = {
            name: (i, j)
            for i, spec in enumerate(TRAIN_PLOTS)
            for j, (name, _) in enumerate(spec.metrics)
        }
        for k, run in enumerate(made):
            for name, points in runs.metric_series(ws, run.id).items():
                if name not in route:
                    continue
                i, j = route[name]
                arr = np.asarray(points, dtype=float)
                pen = pg.mkPen(PALETTE_REF[k % len(PALETTE_REF)], width=THIN)
                pen.setStyle([pg.QtCore.Qt.PenStyle.SolidLine, pg.QtCore.Qt.PenStyle.DashLine,
                              pg.QtCore.Qt.PenStyle.DotLine][j % 3])  # fmt: skip
                curve = holder.plots[i].plot(
                    arr[:, 0], arr[:, 1], pen=pen, name=f"{run.name} {name}"
                )
                curve.setDownsampling(auto=True, method="peak")
                curve.setClipToView(True)
        app.processEvents()
        for plot in holder.plots:
            plot.viewport().repaint()
        theirs.append(time.perf_counter() - t0)
        holder.close()
    return {
        "kdstudio_s": statistics.median(ours),
        "pyqtgraph_s": statistics.median(theirs),
        "runs": runs_n,
        "steps": steps,
        "points": board.point_count(),
    }


PALETTE_REF = ["#4c8bf5", "#e8710a", "#1e9e5a", "#d93f3f", "#9b59d0"]


class QWidgetGrid:
    """Six plain pyqtgraph PlotWidgets in a grid, as large as the Runs panel's (reference)."""

    def __init__(self, n: int) -> None:
        import pyqtgraph as pg
        from PySide6.QtWidgets import QGridLayout, QWidget

        self.widget = QWidget()
        grid = QGridLayout(self.widget)
        self.plots = []
        for i in range(n):
            plot = pg.PlotWidget()
            plot.addLegend(offset=(-8, 8))
            grid.addWidget(plot, i // 3, i % 3)
            self.plots.append(plot)
        self.widget.resize(1400, 560)
        self.widget.show()

    def close(self) -> None:
        self.widget.close()
        self.widget.deleteLater()


def _target(figure: float, bound: float, unit: str, fmt: str = ".1f") -> list[str]:
    """[figure, target, vs target, mark] of a "< bound" target."""
    return [
        f"{figure:{fmt}} {unit}",
        f"< {bound:g} {unit}",
        f"{figure / bound:.2f}x",
        "ok" if figure < bound else "MISSED",
    ]


def result_rows(
    tr: dict | None, co: dict | None, tb: dict | None, pl: dict | None, ov: dict | None
):
    """[measure, kdstudio, reference, target, vs target, mark] of what was measured."""
    rows: list[list[str]] = []
    if tr:
        rows += [
            ["UI lateness while training, p50", f"{tr['p50']:.1f} ms", "", "", "", ""],
            ["UI lateness while training, p99", *_target(tr["p99"], 50, "ms")[:1], "",
             *_target(tr["p99"], 50, "ms")[1:]],
            ["UI lateness while training, max", f"{tr['max']:.1f} ms", "", "", "", f"{tr['ticks']} ticks"],
            ["training steps/s: window (median)", f"{tr['window']:.2f}", "", "", "", ""],
            ["window / CLI throughput", f"{tr['ratio']:.3f}",
             f"{tr['cli']:.2f} steps/s (`kdstudio train`)", ">= 0.95",
             f"{tr['ratio'] / 0.95:.2f}x", "ok" if tr["ratio"] >= 0.95 else "MISSED"],
            ["  GUI-thread CPU while training (median)", f"{100 * tr['gui_cpu_share']:.1f}% of a core", "", "", "", ""],
            ["  each pair's ratio", ", ".join(f"{r:.3f}" for r in tr["ratios"]), "", "", "", ""],
        ]  # fmt: skip
    if co:
        p99 = _target(co["p99"], 50, "ms")
        rows += [
            ["UI lateness while collecting (c=64), p50", f"{co['p50']:.1f} ms", "", "", "", f"{co['rate']:.0f} req/s"],
            ["UI lateness while collecting (c=64), p99", p99[0], "", *p99[1:]],
            ["UI lateness while collecting (c=64), max", f"{co['max']:.1f} ms", "", "", "", f"{co['ticks']} ticks"],
        ]  # fmt: skip
    if tb:
        rows += [
            [f"dataset of {tb['rows']:,} rows: open in the panel", *_split(_target(tb["open_ms"], 100, "ms", ".0f"))],
            ["  a page deep in it (keyset)", *_split(_target(tb["deep_page_ms"], 16, "ms"))],
            ["  scroll to the end (one fetchMore)", *_split(_target(tb["scroll_fetch_ms"], 16, "ms"))],
            ["  full-text search, count + first page", *_split(_target(tb["search_ms"], 200, "ms", ".0f"))],
        ]  # fmt: skip
    if pl:
        ours, theirs = pl["kdstudio"], pl["pyqtgraph"]
        rows += [
            ["1M-point plot frame, mean", f"{ours['mean']:.1f} ms", f"{theirs['mean']:.1f} ms (pyqtgraph peak + clipToView)", "", "", f"{ours['points']:,} points"],
            ["1M-point plot frame, p99", _target(ours["p99"], 16, "ms")[0], f"{theirs['p99']:.1f} ms", *_target(ours["p99"], 16, "ms")[1:]],
            ["1M-point plot frame, max", f"{ours['max']:.1f} ms", f"{theirs['max']:.1f} ms", "", "", ""],
            ["1M-point plot frame, GUI-thread CPU mean", f"{ours['cpu_mean']:.2f} ms", f"{theirs['cpu_mean']:.2f} ms", "", "", ""],
            ["1M-point plot frame, GUI-thread CPU p99", _target(ours["cpu_p99"], 16, "ms")[0], f"{theirs['cpu_p99']:.1f} ms", *_target(ours["cpu_p99"], 16, "ms")[1:]],
        ]  # fmt: skip
    if ov:
        figure = _target(ov["kdstudio_s"], 0.5, "s", ".2f")
        rows += [
            [f"Runs overlay of {ov['runs']} runs x {ov['steps']:,} steps: select to drawn",
             figure[0], f"{ov['pyqtgraph_s']:.2f} s (pyqtgraph's own, `metric_series`)", *figure[1:]],
        ]  # fmt: skip
    return rows


def _split(target: list[str]) -> list[str]:
    """[figure, target, vs, mark] -> [figure, reference "", target, vs, mark]."""
    return [target[0], "", *target[1:]]


SECTIONS = ("training", "collecting", "table", "plots")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smaller model, fewer steps and rows")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these parts")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument(
        "--pairs", type=int, default=None, help="window/CLI training pairs (median ratio)"
    )
    p.add_argument("--rows", type=int, default=None, help="prompts collected at concurrency 64")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--table-rows", type=int, default=None, help="rows of the big dataset")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (scripts/bench)")
    args = p.parse_args()
    steps = args.steps or (60 if args.quick else 300)
    rows = args.rows or (500 if args.quick else 3000)
    hidden = args.hidden or (64 if args.quick else 256)
    only = set(args.only or SECTIONS)

    from support.gui import prepare_app

    from kdstudio.gui.main_window import MainWindow

    tr = co = tb = pl = ov = None
    with tempfile.TemporaryDirectory(prefix="kdstudio-bench-gui-") as tmp:
        root = Path(tmp)
        app = prepare_app(root / "settings")
        ws, student = build(root, max(rows, 200), hidden, 4)
        window = MainWindow(ws)
        window.resize(1400, 900)
        window.show()
        app.processEvents()
        if "training" in only:
            print(
                f"training {steps} steps (hidden {hidden}, 4 layers, device {args.device}) ...",
                file=sys.stderr,
            )
            pairs = args.pairs or (1 if args.quick else 5)
            tr = bench_training(app, window, ws, student, steps, args.device, pairs)
        if "collecting" in only:
            print(f"collecting {rows} prompts at concurrency 64 ...", file=sys.stderr)
            co = bench_collecting(app, window, ws, rows)
        if "table" in only:
            table_rows = args.table_rows or (100_000 if args.quick else 1_000_000)
            print(f"opening a {table_rows:,}-row dataset ...", file=sys.stderr)
            tb = bench_table(app, window, ws, root, table_rows)
        if "plots" in only:
            print("plotting 1,000,000 points at 10 Hz ...", file=sys.stderr)
            pl = bench_plot(app, 1_000_000, 30 if args.quick else 60)
            print("overlaying 5 runs of 10,000 steps in Runs ...", file=sys.stderr)
            ov = bench_overlay(app, window, ws)
        window.close()
        ws.close()

    rows_out = result_rows(tr, co, tb, pl, ov)
    print(table(["measure", "kdstudio", "reference", "target", "vs target", ""], rows_out))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"(machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end; wall times include waiting for a CPU)"
    )
    print(json.dumps({"training": tr, "collecting": co, "table": tb, "plot": pl, "overlay": ov}))
    if args.json:
        from _results import Row, write_results

        out = []
        for measure, figure, ref, target, vs_target, mark in rows_out:
            if measure == "window / CLI throughput":
                rel = f"{tr['ratio']:.3f}x"
            else:
                rel = vs_target and f"{vs_target} of target"
            out.append(Row(measure, figure, ref, rel, target, mark if target else ""))
        write_results(
            args.json, "gui", "Studio: UI lateness while training and collecting, plots, tables",
            out, reference="`kdstudio train` (a subprocess) for throughput; pyqtgraph's own "
            "peak downsampling + clipToView for the plots",
            notes=[f"training {steps} steps, hidden {hidden}; {rows} prompts "
                   "collected at concurrency 64; lateness = 10 ms timer interval - 10 ms",
                   "plot frame = 1,000 new points appended, then the event loop paints the view, "
                   "900x500 px, the whole run in view"],
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
