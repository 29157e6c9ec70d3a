"""The collection job against the real loopback OpenAI-protocol server (no mocked client)."""

from __future__ import annotations

import json
import threading

import pytest
from collect_support import (
    KEY,
    KEY_ENV,
    add_teacher,
    billed_per_prompt,
    files_containing,
    make_prompts,
)
from support.openai_server import OpenAIServer

from kdstudio.collect import CollectConfig, collect, estimate_cost
from kdstudio.collect import store as outputs
from kdstudio.collect.pacing import AdaptiveLimit, backoff
from kdstudio.config import TeacherConfig
from kdstudio.errors import Cancelled, JobFailed, UserError
from kdstudio.events import ListSink, RowDone
from kdstudio.formatting import usd


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY) as s:
        yield s


def cfg(**kw):
    base = {"teacher": "t", "dataset": "prompts", "max_tokens": 16, "max_retries": 6}
    return CollectConfig(**{**base, **kw})


def test_collects_every_prompt_with_logprobs_usage_and_cost(ws, server):
    make_prompts(ws, n=12)
    add_teacher(ws, server)
    summary = collect(cfg(top_logprobs=5), ws)
    assert summary.status == "done" and summary.counts["done"] == 12
    examples = list(outputs.iter_examples(ws, "prompts.t"))
    assert len(examples) == 12
    for e in examples:
        assert e.logprobs is not None and e.logprobs.k == 5
        assert (
            e.logprobs.text() == e.response
        )  # bytes (or token text where bytes were null) spell the answer
    items = outputs.list_items(ws, "prompts.t", limit=50)
    assert all(i.prompt_tokens > 0 and 0 < i.completion_tokens <= 16 for i in items)
    expected = sum((i.prompt_tokens * 1.0 + i.completion_tokens * 2.0) / 1e6 for i in items)
    assert summary.spent == pytest.approx(expected)
    assert all(n == 1 for n in billed_per_prompt(server).values())


def test_the_job_stores_its_events_and_reports_spend_as_numbers(ws, server):
    """Whichever front end runs it (no sink at all here), a collection's events are stored,
    and its progress carries plain numbers that each front end formats its own way."""
    import io

    from kdstudio.events import ConsoleSink, FanoutSink, Progress

    make_prompts(ws, n=6)
    add_teacher(ws, server)
    collect(cfg(samples=2, limit=3), ws)
    stored = ws.events("collect", "prompts.t")
    assert [e["type"] for e in stored][:1] == ["Log"] and stored[-1]["type"] == "Finished"
    assert stored[-1]["summary"]["counts"]["done"] == 6

    sink, console = ListSink(), io.StringIO()
    summary = collect(cfg(samples=2), ws, FanoutSink([sink, ConsoleSink(console)]))
    last = sink.of(Progress)[-1]
    assert last.done == last.total == 6 and summary.counts["done"] == 12
    figures = last.extra
    assert isinstance(figures["spent_usd"], float)
    assert figures["spent_usd"] == pytest.approx(summary.spent)  # summed in another order
    assert isinstance(figures["estimate_usd"], float) and figures["estimate_usd"] > 0
    assert figures["failed"] == figures["retries"] == 0 and figures["concurrency"] == 8
    assert "spent $0.0" in console.getvalue() and "estimate $0.0" in console.getvalue()


def test_transient_faults_are_retried_and_no_prompt_is_paid_twice(ws, server):
    make_prompts(ws, n=16)
    add_teacher(ws, server)
    for kind in ("429", "500", "503", "drop", "malformed", "truncated", "empty_choices"):
        server.add_fault(kind, times=2, retry_after=0.05 if kind == "429" else None)
    sink = ListSink()
    summary = collect(cfg(concurrency=4), ws, sink)
    assert summary.counts["done"] == 16 and summary.counts["failed"] == 0
    assert summary.retries == 14
    billed = billed_per_prompt(server)
    assert len(billed) == 16 and set(billed.values()) == {1}
    assert all(f.fired == 2 for f in server.faults)


def test_a_slow_answer_times_out_and_is_retried(ws, server):
    make_prompts(ws, n=3)
    add_teacher(ws, server)
    server.add_fault("slow", times=1, delay=3.0, match='prompt 1"')
    summary = collect(cfg(timeout=1.0), ws)
    assert summary.counts["done"] == 3 and summary.retries == 1


def test_400_fails_only_that_row_with_the_servers_message(ws, server):
    make_prompts(ws, n=5)
    add_teacher(ws, server)
    server.add_fault(
        "400", times=None, match='prompt 2"', message="This prompt is too long (9999 tokens)"
    )
    sink = ListSink()
    summary = collect(cfg(), ws, sink)
    assert summary.status == "incomplete"
    assert summary.counts["done"] == 4 and summary.counts["failed"] == 1
    failed = outputs.list_items(ws, "prompts.t", outputs.ItemFilter(status="failed"))
    assert failed[0].idx == 2 and "too long (9999 tokens)" in failed[0].error
    assert failed[0].attempts == 1  # not retried
    assert [e.row for e in sink.of(RowDone) if e.status == "failed"] == [2]


def test_401_stops_the_job_with_one_message_and_the_key_is_nowhere(ws, server, monkeypatch):
    make_prompts(ws, n=30)
    add_teacher(ws, server)
    wrong = "sk-wrong-KEY-that-must-not-leak-42"
    monkeypatch.setenv(KEY_ENV, wrong)  # the server echoes the key it got in its 401 message
    sink = ListSink()
    with pytest.raises(JobFailed) as err:
        collect(cfg(concurrency=4), ws, sink)
    message = str(err.value)
    assert "rejected the API key" in message and "HTTP 401" in message
    assert wrong not in message and wrong[:8] not in message
    assert server.stats()["status"]["401"] <= 4  # stopped at once, not 30 tries
    counts = outputs.collection_status_counts(ws, "prompts.t")
    assert counts["queued"] == 30 and counts["failed"] == 0
    ws.close()
    assert files_containing(ws.root, wrong) == []
    assert all(wrong not in repr(e) for e in sink.events)


def test_403_for_logprobs_stops_with_a_hint(ws, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, logprobs=False) as server:
        make_prompts(ws, n=3)
        add_teacher(ws, server)
        with pytest.raises(JobFailed, match="without --top-logprobs"):
            collect(cfg(top_logprobs=5), ws)


def test_rerun_resumes_and_never_requests_done_rows(ws, server):
    make_prompts(ws, n=10)
    add_teacher(ws, server)
    collect(cfg(limit=4), ws)
    assert server.stats()["requests"]["chat"] == 4
    summary = collect(cfg(), ws)  # same settings, more rows: the same collection resumes
    assert summary.requests == 6 and summary.counts["done"] == 10
    again = collect(cfg(), ws)
    assert again.requests == 0
    assert set(billed_per_prompt(server).values()) == {1}


def test_two_collections_share_responses(ws, server):
    make_prompts(ws, n=6)
    add_teacher(ws, server)
    collect(cfg(name="first"), ws)
    summary = collect(cfg(name="second"), ws)
    assert summary.requests == 0 and summary.cached == 6
    assert outputs.get_collection(ws, "second").spend == 0.0
    assert outputs.get_collection(ws, "first").spend > 0
    assert ws.query_one("SELECT COUNT(*) FROM responses")[0] == 6


def test_changed_parameters_are_new_requests_under_a_new_name(ws, server):
    make_prompts(ws, n=2)
    add_teacher(ws, server)
    collect(cfg(), ws)
    with pytest.raises(UserError, match="different settings"):
        collect(cfg(max_tokens=8), ws)
    assert collect(cfg(max_tokens=8, name="short"), ws).requests == 2


def test_samples_with_a_seed_are_distinct_requests(ws, server):
    make_prompts(ws, n=3)
    add_teacher(ws, server)
    summary = collect(cfg(samples=3, seed=7), ws)
    assert summary.counts["done"] == 9
    seeds = sorted({k.split("#seed")[1] for k in billed_per_prompt(server)})
    assert seeds == ["7", "8", "9"]


def test_budget_stops_launching_and_says_so(ws, server):
    make_prompts(ws, n=40)
    # 16 output tokens at $2000/M = $0.032 worst case per request.
    add_teacher(ws, server, price_in=100.0, price_out=2000.0)
    sink = ListSink()
    summary = collect(cfg(budget=0.2, concurrency=2), ws, sink)
    assert summary.status == "stopped" and "budget reached" in summary.message
    assert 0 < summary.spent <= 0.2
    assert (
        0 < summary.counts["done"] < 40 and summary.counts["queued"] == 40 - summary.counts["done"]
    )
    said = [e.message for e in sink.events if "budget reached" in getattr(e, "message", "")]
    assert said == [summary.message]  # once, at the end


@pytest.mark.parametrize("concurrency", [1, 16])
def test_the_budget_is_used_up_to_the_last_affordable_request_at_any_concurrency(
    ws, server, concurrency
):
    """Reservations of the requests in flight are released as they answer, and launching
    goes on until the next request could exceed the budget. At concurrency 16 it used to
    stop as soon as 16 reservations filled it ($0.124 of $0.20 here), and said a spend from
    before the requests in flight came back."""
    make_prompts(ws, n=60)
    add_teacher(ws, server, price_in=0.0, price_out=1000.0)  # worst case: 16 tokens, $0.016
    worst, budget = 0.016, 0.2
    sink = ListSink()
    summary = collect(cfg(budget=budget, concurrency=concurrency), ws, sink)
    assert summary.status == "stopped"
    assert budget - worst < summary.spent <= budget
    billed = sum(i.cost for i in outputs.list_items(ws, "prompts.t", limit=100))
    assert billed == pytest.approx(summary.spent)
    assert summary.message.startswith(
        f"budget reached: {usd(summary.spent)} spent of {usd(budget)}"
    )
    said = [e.message for e in sink.events if "budget reached" in getattr(e, "message", "")]
    assert said == [summary.message]


def test_cost_estimate_counts_prompt_tokens_and_max_output(ws, server):
    make_prompts(ws, n=10)
    add_teacher(ws, server, price_in=1.0, price_out=2.0)
    est = estimate_cost(cfg(samples=2), ws)
    assert est.requests == 20 and est.max_completion_tokens == 20 * 16
    assert est.usd == pytest.approx((est.prompt_tokens * 1.0 + 20 * 16 * 2.0) / 1e6)
    assert server.stats()["requests"] == {}  # nothing was sent
    assert ws.query_one("SELECT COUNT(*) FROM collections")[0] == 0  # nothing was written
    collect(cfg(samples=2, limit=4), ws)
    left = estimate_cost(cfg(samples=2), ws)
    assert left.requests == 12 and left.spent > 0


def test_cancel_lets_in_flight_requests_finish_and_stores_them(ws, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    from kdstudio.events import CancelToken

    with OpenAIServer(api_key=KEY, latency=0.3) as server:
        make_prompts(ws, n=40)
        add_teacher(ws, server)
        cancel = CancelToken()
        threading.Timer(0.5, cancel.cancel).start()
        with pytest.raises(Cancelled):
            collect(cfg(concurrency=4), ws, cancel=cancel)
        counts = outputs.collection_status_counts(ws, "prompts.t")
        billed = server.stats()["billed_total"]
    assert counts["in_flight"] == 0 and counts["retrying"] == 0
    assert counts["done"] == billed  # every answer the server gave was stored
    assert 4 <= counts["done"] < 40


def test_rate_limited_server_loses_no_rows_and_concurrency_adapts(ws, server):
    make_prompts(ws, n=60)
    add_teacher(ws, server)
    server.set_rate_limit(40, burst_s=0.1)
    summary = collect(cfg(concurrency=32), ws)
    assert summary.counts["done"] == 60
    assert server.stats()["status"].get("429", 0) > 0
    assert set(billed_per_prompt(server).values()) == {1}
    assert summary.extra["concurrency"] < 32


def test_adaptive_limit_cuts_on_429_at_most_once_a_second_and_recovers():
    limit = AdaptiveLimit(20)
    limit.on_rate_limited(now=100.0)
    limit.on_rate_limited(now=100.5)  # inside the cooldown: no second cut
    assert limit.limit == 14
    limit.on_rate_limited(now=101.2)
    assert limit.limit == 9
    for _ in range(200):
        limit.on_success()
    assert limit.limit == 20  # back to the setting, never above


def test_backoff_honours_retry_after_and_grows_with_jitter_otherwise():
    import random

    rng = random.Random(0)
    assert 2.0 <= backoff(1, 2.0, rng) <= 2.2
    first = [backoff(1, None, rng) for _ in range(50)]
    fourth = [backoff(4, None, rng) for _ in range(50)]
    assert min(first) >= 0.25 and max(first) <= 0.5
    assert min(fourth) >= 2.0 and max(fourth) <= 4.0
    assert len(set(fourth)) > 1


def test_token_ids_are_asked_for_when_the_probe_found_them(ws, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, token_ids=True) as server:
        make_prompts(ws, n=2)
        add_teacher(ws, server, capabilities={"token_ids": True, "logprobs": True})
        collect(cfg(top_logprobs=3), ws)
    e = next(outputs.iter_examples(ws, "prompts.t"))
    assert e.logprobs.token_ids is not None and e.logprobs.top_ids is not None
    assert all(i >= 10 for i in e.logprobs.token_ids)


def test_a_second_process_on_the_same_collection_is_refused(ws, server):
    import os

    make_prompts(ws, n=2)
    add_teacher(ws, server)
    collect(cfg(), ws)
    ws.db.execute(
        "UPDATE collections SET pid=?, host=?, heartbeat=strftime('%s','now')",
        (os.getppid(), os.uname().nodename),
    )
    with pytest.raises(UserError, match="being collected by process"):
        collect(cfg(), ws)


def test_exhausted_quota_stops_the_job_instead_of_retrying(ws, server):
    make_prompts(ws, n=5)
    add_teacher(ws, server)
    server.add_fault(
        "429", times=None, code="insufficient_quota", message="You exceeded your current quota"
    )
    with pytest.raises(JobFailed, match="no quota left"):
        collect(cfg(concurrency=1), ws)
    assert server.stats()["status"]["429"] == 1


def test_a_later_probe_does_not_change_a_running_collections_settings(ws, server):
    make_prompts(ws, n=4)
    add_teacher(ws, server)
    collect(cfg(top_logprobs=2, limit=2), ws)
    ws.set_teacher_capabilities("t", {"token_ids": True, "logprobs": True})
    summary = collect(cfg(top_logprobs=2), ws)  # same command: resumes
    assert summary.counts["done"] == 4 and summary.requests == 2


def _with_duplicates(ws, n, copies):
    import json as _json

    did = make_prompts(ws, n=n)
    rows = [
        (
            did,
            n + k,
            _json.dumps([{"role": "user", "content": "prompt 0"}]),
            "prompt 0",
            8,
            f"dup{k}",
        )
        for k in range(copies)
    ]
    ws.db.executemany(
        "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, n_chars, row_hash) VALUES (?,?,?,?,?,?)",
        rows,
    )
    ws.db.execute("UPDATE datasets SET n_rows=? WHERE id=?", (n + copies, did))


def test_duplicate_prompts_in_one_collection_are_requested_once(ws, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, latency=0.05) as server:
        _with_duplicates(ws, 4, copies=5)
        add_teacher(ws, server)
        summary = collect(cfg(concurrency=8), ws)
        assert summary.counts["done"] == 9 and summary.requests == 4
        assert set(billed_per_prompt(server).values()) == {1}
    assert summary.cached == 5 and summary.spent == outputs.get_collection(ws, "prompts.t").spend


def test_retry_after_reads_ms_seconds_http_dates_and_reset_durations():
    import email.utils
    import time as _time

    from kdstudio.teachers.openai_api import retry_after

    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    date = email.utils.formatdate(_time.time() + 30, usegmt=True)
    assert 25 <= retry_after({"retry-after": date}) <= 31
    assert retry_after({"x-ratelimit-reset-requests": "1m6.5s"}) == pytest.approx(66.5)
    assert retry_after({"x-ratelimit-reset-requests": "20ms"}) == pytest.approx(0.02)
    assert retry_after({}) is None


def test_an_empty_dataset_is_a_clear_error_and_creates_nothing(ws, server):
    make_prompts(ws, n=0)
    add_teacher(ws, server)
    with pytest.raises(UserError, match="has no rows"):
        collect(cfg(), ws)
    assert ws.query_one("SELECT COUNT(*) FROM collections")[0] == 0


def test_a_model_the_endpoint_does_not_serve_stops_the_job_once_with_the_fix(ws, server):
    make_prompts(ws, n=20)
    add_teacher(ws, server, model="no-such-model")
    with pytest.raises(JobFailed) as caught:
        collect(cfg(concurrency=2), ws)
    message = str(caught.value)
    assert "has no model 'no-such-model'" in message and "teacher probe t" in message
    assert KEY not in message
    counts = outputs.collection_status_counts(ws, "prompts.t")
    assert counts.get("failed", 0) == 0, "the rows stay queued for a re-run with the right model"
    assert counts.get("done", 0) == 0


def test_probe_names_the_models_an_endpoint_serves_when_the_model_is_wrong(ws, server):
    from kdstudio.teachers.probe import probe, summary_lines

    teacher = add_teacher(ws, server, model="no-such-model")
    rows = dict(summary_lines(probe(teacher, KEY)))
    assert rows["model exists"] == "no"
    assert rows["models served"].startswith("teacher-1")


def test_heartbeat_stays_fresh_while_a_long_call_holds_the_collector(ws, server):
    """A long call (a local generate, a batch poll) can outlast STALE_AFTER_S; a helper
    thread keeps the collector's lease alive meanwhile."""
    import time

    from kdstudio.collect.ledger import Collection
    from kdstudio.workspace import Lease

    make_prompts(ws, n=2)
    add_teacher(ws, server)
    collect(cfg(), ws)
    col = Collection(cfg(), ws)
    col.id = ws.query_one("SELECT id FROM collections WHERE name=?", (col.name,))[0]
    ws.db.execute("UPDATE collections SET heartbeat=0 WHERE id=?", (col.id,))
    lease = Lease(ws, "collections", col.id, every_s=0.05, stale_after_s=col.lease.stale_after_s)
    with lease.beating():
        time.sleep(0.3)  # this thread is busy (a generate call); it writes nothing
        beat = ws.query_one("SELECT heartbeat FROM collections WHERE id=?", (col.id,))[0]
    assert beat > time.time() - 5
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]


def test_a_collection_made_before_teachers_were_recorded_learns_its_model_from_its_answers(
    tmp_path, server
):
    """A workspace from before migration 7: its collections' model and endpoint come from
    their stored answers, so a teacher changed before the upgrade is caught too."""
    from workspace_support import workspace_at

    from kdstudio.workspace import Workspace

    root = tmp_path / "old"
    con = workspace_at(root, 6)
    con.execute(
        "INSERT INTO teachers(name, kind, base_url, model, created_at, updated_at)"
        " VALUES ('t', 'openai', ?, 'teacher-2', 0, 0)",  # replaced since: another model
        (server.url,),
    )
    con.execute("INSERT INTO datasets(id, name, n_rows, created_at) VALUES (1, 'prompts', 1, 0)")
    con.execute(
        "INSERT INTO dataset_rows(id, dataset_id, idx, messages, prompt, row_hash)"
        ' VALUES (1, 1, 0, \'[{"role": "user", "content": "prompt 0"}]\', \'prompt 0\', 0)'
    )
    params = cfg().request_params(TeacherConfig(name="t", base_url=server.url, model="x"))
    con.execute(
        "INSERT INTO collections(id, name, teacher_name, dataset_id, params, created_at,"
        " updated_at) VALUES (1, 'prompts.t', 't', 1, ?, 0, 0)",
        (json.dumps(params, sort_keys=True),),
    )
    con.execute(
        "INSERT INTO responses(hash, endpoint, model, text, created_at)"
        " VALUES ('h0', ?, 'teacher-1', 'an answer', 0)",
        (server.url,),
    )
    con.execute(
        "INSERT INTO collection_items(collection_id, row_id, sample, hash, status)"
        " VALUES (1, 1, 0, 'h0', 'done')"
    )
    con.commit()
    con.close()
    ws = Workspace.open(root)
    row = ws.query_one("SELECT teacher_model, teacher_endpoint FROM collections")
    assert tuple(row) == ("teacher-1", server.url)
    with pytest.raises(UserError, match="model: 'teacher-1' -> 'teacher-2'"):
        collect(cfg(), ws)
    ws.close()


def test_the_budget_is_reached_when_nothing_is_in_flight_whatever_the_float_sum_says(ws, server):
    """Reservations are floats: 0.1 + 0.2 - 0.1 - 0.2 leaves 2.8e-17, not 0. Deciding "nothing
    in flight" from that sum waited forever for answers that would never come (a hang seen
    once in the full suite); the count of requests in flight decides."""
    from kdstudio.collect.ledger import Collection
    from kdstudio.collect.live import LiveRunner
    from kdstudio.collect.runner import RunStats
    from kdstudio.events import CancelToken, NullSink

    make_prompts(ws, n=1)
    add_teacher(ws, server, price_in=0.0, price_out=1000.0)
    col = Collection(cfg(budget=0.01), ws)
    col.open()
    runner = LiveRunner(col, NullSink(), CancelToken(), RunStats(), None)
    runner.reserved = 0.1 + 0.2 - 0.1 - 0.2
    assert runner.reserved > 0
    item = next(col.iter_queued())
    assert not runner._affordable(item, holding=0)  # $0.016 > $0.01, and nothing will answer
    assert runner.budget_reached and runner.stop_reason
