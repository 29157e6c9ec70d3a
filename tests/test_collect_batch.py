"""Collecting through the Batch API of the loopback server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from collect_support import (
    KEY,
    KEY_ENV,
    add_teacher,
    answer_held,
    billed_per_prompt,
    claim_all,
    make_prompts,
    other_collection,
)
from support.openai_server import OpenAIServer

from kdstudio.collect import CollectConfig, collect
from kdstudio.collect import store as outputs
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import CancelToken, ListSink, Log
from kdstudio.workspace import Workspace


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, batch_delay=0.1) as s:
        yield s


def cfg(**kw):
    base = {
        "teacher": "t",
        "dataset": "prompts",
        "max_tokens": 16,
        "batch_api": True,
        "batch_poll_s": 0.05,
    }
    return CollectConfig(**{**base, **kw})


def test_batch_api_joins_results_on_custom_id_at_half_price(ws, server):
    make_prompts(ws, n=12)
    add_teacher(ws, server)
    summary = collect(cfg(top_logprobs=2), ws)
    assert summary.status == "done" and summary.counts["done"] == 12
    items = outputs.list_items(ws, "prompts.t", limit=50)
    full = sum((i.prompt_tokens * 1.0 + i.completion_tokens * 2.0) / 1e6 for i in items)
    assert summary.spent == pytest.approx(full / 2)
    # results come back shuffled: each item got the answer to its own prompt
    for e in outputs.iter_examples(ws, "prompts.t"):
        detail = outputs.get_item(ws, "prompts.t", e.row_id)
        direct = server.complete(
            {
                "model": "teacher-1",
                "messages": detail.messages,
                "max_tokens": 16,
                "temperature": 1.0,
            }
        )
        assert e.response == direct["choices"][0]["message"]["content"]
        assert e.logprobs is not None and e.logprobs.k == 2
    assert server.stats()["requests"].get("chat") is None  # nothing went live
    assert set(billed_per_prompt(server).values()) == {1}


def test_failed_lines_retry_in_a_new_round_and_bad_requests_fail_the_row(ws, server):
    make_prompts(ws, n=6)
    add_teacher(ws, server)
    server.add_fault("500", endpoint="batch_line", match='prompt 1"')
    server.add_fault(
        "400", endpoint="batch_line", match='prompt 2"', times=None, message="bad prompt"
    )
    summary = collect(cfg(), ws)
    assert summary.counts["done"] == 5 and summary.counts["failed"] == 1
    failed = outputs.list_items(ws, "prompts.t", outputs.ItemFilter(status="failed"))
    assert failed[0].idx == 2 and "bad prompt" in failed[0].error
    assert ws.query_one("SELECT COUNT(*) FROM collection_batches")[0] == 2


def test_a_restarted_process_picks_up_the_recorded_batch(ws, server):
    make_prompts(ws, n=8)
    add_teacher(ws, server)
    cancel = CancelToken()

    class StopAfterSubmit(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, Log) and event.message.startswith("submitted"):
                cancel.cancel("stopped after submitting")

    with pytest.raises(Cancelled, match="keeps running at the provider"):
        collect(cfg(), ws, StopAfterSubmit(), cancel)
    recorded = ws.query("SELECT batch_id, status FROM collection_batches")
    assert len(recorded) == 1 and recorded[0]["status"] != "processed"
    with pytest.raises(UserError, match="re-run with --batch-api"):
        collect(cfg(batch_api=False), ws)  # going live now would pay twice
    summary = collect(cfg(), ws)
    assert summary.counts["done"] == 8
    assert len(server.batches) == 1  # picked up, not submitted again
    assert set(billed_per_prompt(server).values()) == {1}


def test_a_batch_created_just_before_a_crash_is_adopted_not_paid_twice(ws, server, monkeypatch):
    from kdstudio.collect import batch as batch_mod

    make_prompts(ws, n=5)
    add_teacher(ws, server)
    real_record = batch_mod.BatchRunner._record

    def crash(self, b, items):
        raise KeyboardInterrupt  # the process dies between batches.create and recording it

    monkeypatch.setattr(batch_mod.BatchRunner, "_record", crash)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg(), ws)
    monkeypatch.setattr(batch_mod.BatchRunner, "_record", real_record)
    sink = ListSink()
    summary = collect(cfg(), ws, sink)
    assert summary.counts["done"] == 5
    assert len(server.batches) == 1
    assert any("adopting" in e.message for e in sink.of(Log))
    assert set(billed_per_prompt(server).values()) == {1}


def test_batch_budget_submits_only_what_fits(ws, server):
    make_prompts(ws, n=10)
    add_teacher(ws, server, price_in=0.0, price_out=1000.0)  # 16 tokens: $0.016, $0.008 in a batch
    summary = collect(cfg(budget=0.03), ws)
    assert summary.status == "stopped"
    assert summary.counts["done"] == 3 and summary.spent <= 0.03


def test_duplicate_prompts_go_into_the_batch_once(ws, server):
    import json as _json

    did = make_prompts(ws, n=3)
    ws.db.execute(
        "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, n_chars, row_hash) VALUES (?,?,?,?,?,?)",
        (did, 3, _json.dumps([{"role": "user", "content": "prompt 1"}]), "prompt 1", 8, "dup"),
    )
    ws.db.execute("UPDATE datasets SET n_rows=4 WHERE id=?", (did,))
    add_teacher(ws, server)
    summary = collect(cfg(), ws)
    assert summary.counts["done"] == 4 and summary.cached == 1
    assert set(billed_per_prompt(server).values()) == {1} and len(billed_per_prompt(server)) == 3


def test_a_batch_leaves_out_what_a_live_collector_has_in_flight_and_reuses_its_answers(ws, server):
    """Another live collector has prompts 3 and 4 in flight: the batch asks for 0-2 only,
    waits, and takes 3 and 4 from the cache once they are answered there (before, the
    batch paid for them again)."""
    make_prompts(ws, n=5)
    add_teacher(ws, server)
    other_collection(ws, 5, max_tokens=16)
    held = claim_all(ws, "other", os.getppid(), from_idx=3)  # alive, on this host
    assert len(held) == 2
    sink = ListSink()
    box = {}

    def run():
        try:
            box.update(summary=collect(cfg(), Workspace.open(ws.root), sink))
        except BaseException as e:
            box["error"] = e
            raise

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 30
    while not any("waiting for their answers" in e.message for e in sink.of(Log)):
        assert time.monotonic() < deadline and job.is_alive(), (
            box,
            [e.message for e in sink.of(Log)],
        )
        time.sleep(0.05)
    assert sorted(billed_per_prompt(server)) == ["prompt 0", "prompt 1", "prompt 2"]
    time.sleep(0.5)
    assert job.is_alive()  # still waiting for the other collector
    answer_held(ws, held)  # the other collector's answers arrive
    job.join(30)
    summary = box["summary"]
    assert summary.status == "done" and summary.counts["done"] == 5 and summary.cached == 2
    assert sorted(billed_per_prompt(server)) == ["prompt 0", "prompt 1", "prompt 2"]
    assert len(server.batches) == 1
    assert any("2 requests are in flight for another collection" in e.message for e in sink.of(Log))
    assert ws.query_one("SELECT COUNT(*) FROM request_claims")[0] == 0


def test_a_batch_takes_over_what_a_dead_collector_claimed(ws, server):
    make_prompts(ws, n=4)
    add_teacher(ws, server)
    other_collection(ws, 4, max_tokens=16)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim_all(ws, "other", dead.pid)
    summary = collect(cfg(), ws)
    assert summary.counts["done"] == 4 and summary.cached == 0
    assert set(billed_per_prompt(server).values()) == {1} and len(billed_per_prompt(server)) == 4


def test_a_live_collector_waits_for_requests_a_batch_has_in_flight(ws, server):
    """While the batch collector polls, its requests are claimed: a live collection of the
    same prompts waits for the batch's answers instead of paying for them again."""
    server.batch_delay = 1.5
    make_prompts(ws, n=4)
    add_teacher(ws, server)
    batch_sink = ListSink()
    box = {}
    batch_job = threading.Thread(
        target=lambda: box.update(batch=collect(cfg(), Workspace.open(ws.root), batch_sink))
    )
    batch_job.start()
    deadline = time.monotonic() + 30
    while not any(e.message.startswith("submitted") for e in batch_sink.of(Log)):
        assert time.monotonic() < deadline and batch_job.is_alive()
        time.sleep(0.05)
    assert ws.query_one("SELECT COUNT(*) FROM request_claims")[0] == 4
    live_sink = ListSink()
    live = collect(
        CollectConfig(teacher="t", dataset="prompts", name="live", max_tokens=16), ws, live_sink
    )
    batch_job.join(30)
    assert box["batch"].counts["done"] == 4 and live.counts["done"] == 4
    assert live.requests == 0 and live.cached == 4
    notes = [e.message for e in live_sink.of(Log) if "in flight for another" in e.message]
    assert notes == [
        "4 requests are in flight for another collection: waiting for their answers instead of"
        " paying for them again"
    ]
    assert server.stats()["requests"].get("chat") is None  # nothing went live
    assert set(billed_per_prompt(server).values()) == {1}
