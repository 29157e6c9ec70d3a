"""Events that core jobs report, the `Sink` protocol, `CancelToken` and the standard sinks.

A job takes `(config, workspace, sink, cancel)`; it never knows which front end runs it.
Events are small frozen dataclasses of plain Python values (never tensors).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO, runtime_checkable

from kdstudio.errors import Cancelled
from kdstudio.formatting import duration, usd

if TYPE_CHECKING:
    from kdstudio.workspace import Workspace


@dataclass(frozen=True)
class Event:
    """Base class: every event carries the wall-clock time it was made."""

    t: float = field(default_factory=time.time, kw_only=True)

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Progress(Event):
    """`done` of `total` units (total None when unknown); `extra` holds plain figures
    (numbers, never formatted text; a key ending in `_usd` is an amount of money)."""

    done: int
    total: int | None = None
    unit: str = "item"
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics(Event):
    """Scalar metrics at a training step (Python floats only)."""

    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class Log(Event):
    message: str
    level: str = "info"


@dataclass(frozen=True)
class RowDone(Event):
    """One row of a job reached a final state (done or failed)."""

    row: int | str
    status: str
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the event's name in the architecture
    """Something the user should know about; the job goes on."""

    message: str
    where: str = ""


@dataclass(frozen=True)
class Finished(Event):
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed(Event):
    message: str
    details: str = ""
    cancelled: bool = False


@runtime_checkable
class Sink(Protocol):
    def emit(self, event: Event) -> None: ...


class NullSink:
    def emit(self, event: Event) -> None:
        pass


class ListSink:
    """Keeps every event (tests, and the GUI's replay of a finished job)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


class FanoutSink:
    """Sends each event to several sinks; one failing sink does not starve the others."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, event: Event) -> None:
        error: Exception | None = None
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as exc:  # noqa: BLE001 - re-raised after the others ran
                error = error or exc
        if error is not None:
            raise error


class CancelToken:
    """A flag a job checks at every step or row. Stop means: finish the step, save, return."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled by the user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel; True if cancelled."""
        return self._event.wait(timeout)


class StoreSink:
    """Persists events, and the metrics of a run, in the workspace so any job can be reopened.

    Metrics go to `run_metrics` when `run_id` is given (else nowhere), committed together once
    every `metrics_every_s` seconds (the window tails the table) and by `flush()`, which the
    trainer calls at every checkpoint and when the run ends: a crash loses at most the figures
    of steps that a resume repeats anyway. Every other event goes to `events` at once;
    Progress events are frequent, so only one per `progress_every_s` seconds is stored.
    """

    def __init__(
        self,
        workspace: Workspace,
        job_kind: str,
        job_id: int | str,
        run_id: int | None = None,
        progress_every_s: float = 2.0,
        metrics_every_s: float = 1.0,
    ) -> None:
        self.ws, self.job_kind, self.job_id, self.run_id = workspace, job_kind, str(job_id), run_id
        self.progress_every_s, self.metrics_every_s = progress_every_s, metrics_every_s
        self._last_progress = 0.0
        self._metrics: list[Metrics] = []
        self._last_metrics = time.monotonic()

    def emit(self, event: Event) -> None:
        if isinstance(event, Metrics):
            if self.run_id is not None:
                self._metrics.append(event)
                if time.monotonic() - self._last_metrics >= self.metrics_every_s:
                    self.flush()
            return
        if isinstance(event, Progress):
            if event.t - self._last_progress < self.progress_every_s and event.done != event.total:
                return
            self._last_progress = event.t
        if isinstance(event, RowDone) and event.status == "done":
            return  # the rows themselves are stored by the job; only failures are events
        payload = {k: v for k, v in event.to_dict().items() if k != "t"}
        self.ws.add_event(self.job_kind, self.job_id, event.type, payload, event.t)

    def flush(self) -> None:
        """Commit the metrics received since the last flush, in one transaction."""
        self._last_metrics = time.monotonic()
        if not self._metrics:
            return
        with self.ws.tx():
            for m in self._metrics:
                self.ws.add_metrics(self.run_id, m.step, m.values, m.t)
        self._metrics.clear()


class ConsoleSink:
    """CLI output: a one-line progress bar on a terminal, plain lines otherwise.

    Logs and warnings go to stderr so that `--json` output on stdout stays clean.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 28, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width, self.quiet = width, quiet
        self._start: float | None = None
        self._bar_shown = False
        self._last_line = 0.0
        self._row_problems: dict[str, int] = {}
        self.failed: Failed | None = None  # the failure it printed, if any

    SAME_PROBLEM_SHOWN = 3

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[2K")
            self._bar_shown = False

    def _line(self, text: str) -> None:
        self._clear_bar()
        self.stream.write(text + "\n")
        self.stream.flush()

    def progress_text(self, ev: Progress) -> str:
        now = ev.t
        if self._start is None or (ev.done == 0 and not self._bar_shown):
            self._start = now  # a new job (or its first event): rate and ETA count from here
        elapsed = max(now - self._start, 1e-9)
        parts = []
        if ev.total:
            frac = min(ev.done / ev.total, 1.0)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            rate = ev.done / elapsed
            eta = (ev.total - ev.done) / rate if rate > 0 else None
            parts.append(f"[{bar}] {ev.done}/{ev.total} {ev.unit}s {frac * 100:5.1f}%")
            parts.append(f"{rate:.1f}/s ETA {duration(eta)}")
        else:
            parts.append(f"{ev.done} {ev.unit}s")
        for key, value in ev.extra.items():
            parts.append(_figure(key, value))
        if ev.message:
            parts.append(ev.message)
        return "  ".join(parts)

    def emit(self, event: Event) -> None:
        if isinstance(event, Progress):
            if self.quiet:
                return
            text = self.progress_text(event)
            if self.tty:
                self.stream.write("\r\x1b[2K" + text)
                self.stream.flush()
                self._bar_shown = True
            elif event.t - self._last_line >= 5.0 or event.done == event.total:
                self._last_line = event.t
                self._line(text)
        elif isinstance(event, Metrics):
            if not self.quiet:
                vals = "  ".join(f"{k} {v:.4g}" for k, v in event.values.items())
                self._line(f"step {event.step}  {vals}")
        elif isinstance(event, Log):
            if not self.quiet or event.level in ("warning", "error"):
                self._line(event.message)
        elif isinstance(event, Warning):
            self._line(f"warning: {event.message}" + (f" ({event.where})" if event.where else ""))
        elif isinstance(event, RowDone):
            if event.status != "done":
                self._row_problem(event)
        elif isinstance(event, Finished):
            self._start = None  # the next job's progress starts its own clock
            self._problem_summary()
            self._line(event.message or "done")
        elif isinstance(event, Failed):
            self._start = None
            if not event.cancelled:
                self.failed = event
            self._problem_summary()
            self._line(("stopped: " if event.cancelled else "error: ") + event.message)

    def _row_problem(self, event: RowDone) -> None:
        """Print a failing row; the same problem on many rows is shown a few times, then counted."""
        key = f"{event.status}: {event.detail}"
        seen = self._row_problems[key] = self._row_problems.get(key, 0) + 1
        if seen <= self.SAME_PROBLEM_SHOWN:
            self._line(f"row {event.row}: {key}")
        if seen == self.SAME_PROBLEM_SHOWN:
            self._line("(more rows with this same problem are counted, not shown)")

    def _problem_summary(self) -> None:
        for key, count in self._row_problems.items():
            if count > self.SAME_PROBLEM_SHOWN:
                self._line(f"{count} rows in all: {key}")
        self._row_problems.clear()


def _figure(key: str, value: Any) -> str:
    """One figure of a Progress event's `extra`: a `*_usd` key is money."""
    if key.endswith("_usd") and isinstance(value, (int, float)):
        return f"{key.removesuffix('_usd')} {usd(value)}"
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def event_from_dict(kind: str, payload: dict[str, Any], t: float) -> Event:
    """Rebuild a stored event (for the GUI's and `runs show`'s history)."""
    cls = {c.__name__: c for c in (Progress, Metrics, Log, RowDone, Warning, Finished, Failed)}
    return cls[kind](**payload, t=t)


def dumps(event: Event) -> str:
    return json.dumps({"type": event.type, **event.to_dict()})
