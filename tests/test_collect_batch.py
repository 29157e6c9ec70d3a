"""Collecting through the Batch API of the loopback server."""

from __future__ import annotations

import pytest
from collect_support import KEY, KEY_ENV, add_teacher, billed_per_prompt, make_prompts
from support.openai_server import OpenAIServer

from kdstudio.collect import CollectConfig, collect
from kdstudio.collect import store as outputs
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import CancelToken, ListSink, Log


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
