"""Events, sinks and the cancel token."""

from __future__ import annotations

import io

import pytest

from kdstudio import events as ev
from kdstudio.errors import Cancelled


def test_fanout_delivers_to_all_even_when_one_sink_fails():
    class Broken:
        def emit(self, event):
            raise RuntimeError("disk full")

    good = ev.ListSink()
    with pytest.raises(RuntimeError, match="disk full"):
        ev.FanoutSink([Broken(), good]).emit(ev.Log("hello"))
    assert [e.message for e in good.events] == ["hello"]


def test_cancel_token_wakes_a_waiting_job_and_raises():
    token = ev.CancelToken()
    assert token.wait(0.01) is False
    token.cancel("user pressed stop")
    assert token.wait(5) is True
    with pytest.raises(Cancelled, match="user pressed stop"):
        token.raise_if_cancelled()


def test_store_sink_persists_metrics_and_events_for_reopening(ws):
    ws.db.execute("INSERT INTO runs(name, config, created_at, updated_at) VALUES ('r','{}',0,0)")
    sink = ev.StoreSink(ws, "train", "r", run_id=1)
    sink.emit(ev.Metrics(step=3, values={"loss": 1.25}))
    sink.emit(ev.Warning("tokenizer has no chat template", where="student"))
    sink.emit(ev.RowDone(row=1, status="done"))
    sink.flush()  # metrics are committed together, once a second and on flush
    assert [(m["step"], m["name"], m["value"]) for m in ws.metrics(1)] == [(3, "loss", 1.25)]
    stored = ws.events("train", "r")
    assert [e["type"] for e in stored] == ["Warning"]
    assert stored[0]["message"] == "tokenizer has no chat template"
    rebuilt = ev.event_from_dict(
        stored[0]["type"],
        {k: v for k, v in stored[0].items() if k not in ("t", "type")},
        stored[0]["t"],
    )
    assert isinstance(rebuilt, ev.Warning)


def test_store_sink_commits_a_runs_metrics_together_and_on_flush(ws):
    ws.db.execute("INSERT INTO runs(name, config, created_at, updated_at) VALUES ('r','{}',0,0)")
    held = ev.StoreSink(ws, "train", "r", run_id=1, metrics_every_s=3600)
    for step in (1, 2):
        held.emit(ev.Metrics(step=step, values={"loss": 1.0 / step}))
    assert ws.metrics(1) == []  # within the interval: buffered, not yet written
    held.flush()
    assert [m["step"] for m in ws.metrics(1)] == [1, 2]
    ev.StoreSink(ws, "train", "r", run_id=1, metrics_every_s=0).emit(
        ev.Metrics(step=3, values={"loss": 0.3})
    )
    assert [m["step"] for m in ws.metrics(1)] == [1, 2, 3]
    ev.StoreSink(ws, "eval", "7").emit(ev.Metrics(step=4, values={"loss": 0.2}))
    assert [m["step"] for m in ws.metrics(1)] == [1, 2, 3]  # no run: metrics are not stored


def test_console_sink_shows_rate_eta_and_extra_figures():
    out = io.StringIO()
    sink = ev.ConsoleSink(out)
    sink.emit(ev.Progress(done=0, total=10, unit="row", t=100.0))
    sink.emit(ev.Progress(done=5, total=10, unit="row", extra={"spend $": 0.5}, t=110.0))
    sink.emit(ev.Progress(done=10, total=10, unit="row", t=120.0))
    text = out.getvalue()
    assert "10/10 rows 100.0%" in text
    assert "0.5/s" in text
    sink.emit(ev.Failed("401 from the teacher"))
    assert out.getvalue().rstrip().endswith("error: 401 from the teacher")


def test_console_sink_counts_a_problem_repeated_on_many_rows_instead_of_flooding():
    out = io.StringIO()
    sink = ev.ConsoleSink(out)
    for row in range(60):
        sink.emit(ev.RowDone(row=row, status="failed", detail="HTTP 404: no such model"))
    sink.emit(ev.RowDone(row=61, status="failed", detail="HTTP 400: context too long"))
    sink.emit(ev.Finished("collection done"))
    lines = out.getvalue().splitlines()
    assert sum("no such model" in line for line in lines) == 4  # 3 rows + the summary
    assert "60 rows in all: failed: HTTP 404: no such model" in lines
    assert "row 61: failed: HTTP 400: context too long" in lines
    assert lines[-1] == "collection done"


def test_console_sink_starts_a_new_clock_for_each_job_it_reports():
    out = io.StringIO()
    sink = ev.ConsoleSink(out)
    sink.emit(ev.Progress(done=0, total=10, unit="step", t=0.0))
    sink.emit(ev.Progress(done=10, total=10, unit="step", t=10.0))
    sink.emit(ev.Finished("first job done", t=10.0))
    sink.emit(ev.Progress(done=0, total=4, unit="row", t=500.0))
    sink.emit(ev.Progress(done=4, total=4, unit="row", t=502.0))
    assert "2.0/s" in out.getvalue().splitlines()[-1], "the second job's rate ignores the first"
