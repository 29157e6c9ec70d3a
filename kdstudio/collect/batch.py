"""Collecting through the OpenAI Batch API (half the token price, results within 24 h).

One round: write the queued requests as JSONL (`custom_id` = "ROW_ID:SAMPLE"), upload
it, create the batch, record its id in `collection_batches` (in the same transaction
that marks its items in flight), poll until it ends, download the output and error
files, and join them on `custom_id`. Lines that failed transiently, or never came back
(an expired batch), go back to the queue for the next round.

A restarted process picks up a recorded batch instead of submitting again. The window
between `batches.create` and recording its id is covered too: each batch carries
metadata (collection name and a hash of its custom ids) and an unrecorded batch with the
same metadata is adopted rather than paid for twice.

Requests are claimed across collections as the live runner claims them
(`Collection.claim_requests`): what another live collector has in flight stays out of the
batch and is waited for, what was answered meanwhile comes from the cache, and while this
process polls, a live collection that needs the same answers waits for the batch's. The
claims end with this process (as every claim does); a batch picked up later still stores
what it paid for as this collection's spend.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

from kdstudio.collect.ledger import AWAIT_CHECK_S, Collection, awaited_note
from kdstudio.collect.pacing import backoff
from kdstudio.collect.runner import Request, RunStats
from kdstudio.errors import JobFailed
from kdstudio.events import CancelToken, Log, Progress, RowDone, Sink
from kdstudio.teachers.openai_api import classify, fatal_message, parse_completion, redact

TERMINAL = ("completed", "failed", "expired", "cancelled")
MAX_LINES = 50_000  # the Batch API's limit per batch
ENDPOINT = "/v1/chat/completions"


def custom_id(item: Request) -> str:
    return f"{item.row_id}:{item.sample}"


def _line(item: Request) -> bytes:
    doc = {"custom_id": custom_id(item), "method": "POST", "url": ENDPOINT, "body": item.body}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"


def _ids_hash(items: list[Request]) -> str:
    return hashlib.sha256("\n".join(sorted(custom_id(i) for i in items)).encode()).hexdigest()[:32]


class BatchRunner:
    """Collects the queued items of a collection through the Batch API."""

    def __init__(
        self, col: Collection, sink: Sink, cancel: CancelToken, stats: RunStats, key: str | None
    ) -> None:
        self.col, self.sink, self.cancel, self.stats, self.key = col, sink, cancel, stats, key
        self.hidden = [key, *col.secrets]  # what no message may repeat
        self.cfg = col.config
        self.rng = random.Random()
        self.fatal: str | None = None
        self.stop_reason: str | None = None
        self.budget_reached = False

    # -- API calls with our own retries ---------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        for attempt in range(1, self.cfg.max_retries + 2):
            try:
                return fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - classified below
                outcome = classify(exc, self.hidden)
                if outcome.kind == "fatal":
                    self.fatal = fatal_message(self.col.teacher, outcome)
                    raise _Stop from None
                if outcome.kind == "row" or attempt > self.cfg.max_retries:
                    raise JobFailed(f"Batch API: could not {what}: {outcome.message}") from None
                if self.cancel.wait(backoff(attempt, outcome.retry_after, self.rng)):
                    raise _Stop from None
        raise AssertionError("unreachable")

    # -- the rounds -------------------------------------------------------------------------------
    def run(self) -> None:
        import openai

        teacher = self.col.teacher
        client = openai.OpenAI(
            base_url=teacher.base_url,
            api_key=self.key or "not-needed",
            max_retries=0,
            timeout=self.cfg.timeout,
            default_headers=dict(self.col.headers),
        )
        retry_rounds = 0
        try:
            while True:
                active = self._recorded(client)
                if not active:
                    items = self._affordable(list(self.col.iter_queued()))
                    if not items:
                        break
                    if any(i.attempts for i in items):  # a round that asks again
                        if retry_rounds >= self.cfg.max_retries:
                            break
                        retry_rounds += 1
                    items = self._claimed(items)
                    if not items:
                        continue  # all answered meanwhile, by another collection
                    active = self._submit(client, items)
                if not self._wait(client, active):
                    return
                self._collect(client, active)
                if self.stop_reason:
                    return
        except _Stop:
            return
        finally:
            client.close()

    def _recorded(self, client: Any) -> list[dict[str, Any]]:
        rows = self.col.ws.query(
            "SELECT * FROM collection_batches WHERE collection_id=? AND status != 'processed' ORDER BY id",
            (self.col.id,),
        )
        active = [dict(r) for r in rows]
        if active:
            self.sink.emit(
                Log(
                    f"picking up {len(active)} Batch API job(s) already submitted: {', '.join(b['batch_id'] for b in active)}"
                )
            )
            # In flight again: another collector that needs these answers waits for them.
            with self.col.ws.tx() as con:
                self.col.claim_requests(con, self._waiting())
        return active

    def _claimed(self, items: list[Request]) -> list[Request]:
        """Claim the requests of the next batch across collections (as the live runner
        does): one answered meanwhile comes from the cache; one another live collector has
        in flight stays out of this batch and is waited for, then taken from the cache or,
        once that collector gives it up, asked for here. Returns what to submit now."""
        pending = items
        while True:
            events: list[RowDone] = []
            with self.col.ws.tx() as con:
                send, held, answered = self.col.claim_requests(con, pending)
                for item in answered:
                    events.append(self.col.done_from_cache(con, item))
                    self.stats.done += 1
            for event in events:
                self.sink.emit(event)
            if send or not held:
                if held:  # they stay queued: the next round takes them (or their answers)
                    self.sink.emit(Log(awaited_note(held, "the next round")))
                return send
            self.sink.emit(Log(awaited_note(held)))
            while True:  # nothing to submit but what another collector is asking for
                if self.cancel.wait(AWAIT_CHECK_S):
                    self.stop_reason = self.cancel.reason or "cancelled"
                    raise _Stop
                answered_now, free = self.col.awaited(sorted({i.hash for i in held}))
                if answered_now or free:
                    pending = held
                    break

    def _affordable(self, items: list[Request]) -> list[Request]:
        budget = self.cfg.budget
        if budget is None:
            return items
        left, out = budget - self.stats.spent, []
        for item in items:
            worst = self.col.worst_cost(item, 1.5)
            if worst > left:
                self.budget_reached = True
                self.stop_reason = (
                    f"{len(out):,} of {len(items):,} requests were submitted, to keep the worst "
                    "case within it; re-run with a larger --budget for the rest"
                )
                break
            left -= worst
            out.append(item)
        return out

    def _submit(self, client: Any, items: list[Request]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        items = [i for i in items if not (i.hash in seen or seen.add(i.hash))]  # duplicates once
        out = []
        for start in range(0, len(items), MAX_LINES):
            chunk = items[start : start + MAX_LINES]
            metadata = {"kdstudio_collection": self.col.name, "kdstudio_items": _ids_hash(chunk)}
            batch = self._adopt(client, metadata)
            if batch is None:
                data = b"".join(_line(i) for i in chunk)
                upload = self._call(
                    "upload the requests",
                    client.files.create,
                    file=(f"{self.col.name}.jsonl", data),
                    purpose="batch",
                )
                batch = self._call(
                    "create the batch",
                    client.batches.create,
                    input_file_id=upload.id,
                    endpoint=ENDPOINT,
                    completion_window="24h",
                    metadata=metadata,
                )
            out.append(self._record(batch, chunk))
            self.stats.requests += len(chunk)
            self.sink.emit(Log(f"submitted Batch API job {batch.id} with {len(chunk):,} requests"))
        return out

    def _adopt(self, client: Any, metadata: dict[str, str]) -> Any:
        """An unrecorded batch of ours with the same items (created just before a crash)."""
        recorded = {
            r[0]
            for r in self.col.ws.query(
                "SELECT batch_id FROM collection_batches WHERE collection_id=?", (self.col.id,)
            )
        }
        page = self._call("list batches", client.batches.list, limit=100)
        for batch in page.data:
            meta = batch.metadata or {}
            if (
                batch.id not in recorded
                and meta == metadata
                and batch.status not in ("failed", "cancelled", "expired")
            ):
                self.sink.emit(Log(f"adopting Batch API job {batch.id} submitted before a restart"))
                return batch
        return None

    def _record(self, batch: Any, items: list[Request]) -> dict[str, Any]:
        now = time.time()
        with self.col.ws.tx() as con:
            cur = con.execute(
                "INSERT INTO collection_batches(collection_id, batch_id, input_file_id, status, n_requests,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                (self.col.id, batch.id, batch.input_file_id, batch.status, len(items), now, now),
            )
            con.execute("UPDATE collections SET batch_id=? WHERE id=?", (batch.id, self.col.id))
            self.col.mark(con, items, "in_flight", bump=True)
        return {
            "id": cur.lastrowid,
            "batch_id": batch.id,
            "input_file_id": batch.input_file_id,
            "status": batch.status,
        }

    def _wait(self, client: Any, active: list[dict[str, Any]]) -> bool:
        """Poll until every batch ends; False when cancelled (the batches keep running)."""
        while True:
            states = [
                self._call("check the batch", client.batches.retrieve, b["batch_id"])
                for b in active
            ]
            done = sum(
                (s.request_counts.completed + s.request_counts.failed) if s.request_counts else 0
                for s in states
            )
            total = sum(s.request_counts.total if s.request_counts else 0 for s in states)
            for b, s in zip(active, states, strict=True):
                b["remote"] = s
                self.col.ws.db.execute(
                    "UPDATE collection_batches SET status=?, updated_at=? WHERE id=? AND status != 'processed'",
                    (s.status, time.time(), b["id"]),
                )
            statuses = ", ".join(sorted({s.status for s in states}))
            self.sink.emit(
                Progress(
                    done=done,
                    total=total or None,
                    unit="request",
                    message=f"Batch API: {statuses}",
                    extra=self.stats.progress().extra,  # spend and counts of this collection
                )
            )
            if all(s.status in TERMINAL for s in states):
                return True
            if self.cancel.wait(self.cfg.batch_poll_s):
                self.stop_reason = (
                    f"{self.cancel.reason or 'cancelled'}; the Batch API job keeps running at the provider"
                    " and its results are picked up when you re-run the same command"
                )
                return False

    def _collect(self, client: Any, active: list[dict[str, Any]]) -> None:
        """Join the results of the (ended) batches with every item still waiting."""
        results: dict[str, dict[str, Any]] = {}
        for batch in active:
            remote = batch["remote"]
            for file_id in (remote.output_file_id, remote.error_file_id):
                if file_id:
                    text = self._call("download the results", client.files.content, file_id).text
                    for line in text.splitlines():
                        if line.strip():
                            doc = json.loads(line)
                            results[str(doc.get("custom_id"))] = doc
        failed = [b["remote"] for b in active if b["remote"].status == "failed"]
        if failed and not results:
            errors = getattr(getattr(failed[0], "errors", None), "data", None) or []
            detail = (
                "; ".join(redact(str(e.message), self.hidden) for e in errors[:3])
                or "no reason given"
            )
            with self.col.ws.tx() as con:
                self._mark_processed(con, active)
            raise JobFailed(f"Batch API job {failed[0].id} failed: {detail}")
        events = []
        with self.col.ws.tx() as con:
            waiting = self._waiting()
            answered = [i for i in waiting if custom_id(i) in results]
            for item in answered:
                events.append(self._apply(con, item, results[custom_id(item)]))
            for item in waiting:
                if custom_id(item) in results:
                    continue
                # A duplicate of a request answered above shares its answer; others wait.
                if con.execute("SELECT 1 FROM responses WHERE hash=?", (item.hash,)).fetchone():
                    self.col.mark_cached(con, [item])
                    self.stats.done += 1
                else:
                    self.col.mark(con, [item], "queued")
            self._mark_processed(con, active)
            self.col.unclaim_all(con)  # every batch of it is processed: nothing in flight
        for e in events:
            if e is not None:
                self.sink.emit(e)

    def _waiting(self) -> list[Request]:
        """Requests not done yet (in flight in a batch, or queued again after a restart)."""
        rows = self.col.ws.query(
            "SELECT ci.row_id, ci.sample, ci.hash, ci.attempts, d.idx FROM collection_items ci"
            " JOIN dataset_rows d ON d.id = ci.row_id WHERE ci.collection_id=?"
            " AND ci.status IN ('in_flight', 'queued')",
            (self.col.id,),
        )
        return [
            Request(r["row_id"], r["sample"], r["hash"], {}, 0, r["idx"], r["attempts"])
            for r in rows
        ]

    def _apply(self, con: Any, item: Request, doc: dict[str, Any]) -> RowDone | None:
        response = doc.get("response") or {}
        status = response.get("status_code")
        body = response.get("body") or {}
        if status == 200:
            try:
                resp = parse_completion(body, self.col.teacher, batch=True)
            except Exception as exc:  # noqa: BLE001 - a malformed line goes back to the queue
                self.col.mark(
                    con, [item], "queued", redact(f"malformed batch result: {exc}", self.hidden)
                )
                return None
            self.stats.spent += self.col.store(con, item, resp)
            self.stats.done += 1
            return RowDone(row=item.idx, status="done", extra=item.ids)
        error = body.get("error") if isinstance(body, dict) else None
        message = redact(
            str((error or {}).get("message") or doc.get("error") or f"HTTP {status}"), self.hidden
        )
        if status in (400, 404, 422):
            self.col.mark(con, [item], "failed", f"HTTP {status}: {message}")
            self.stats.failed += 1
            return RowDone(
                row=item.idx, status="failed", detail=f"HTTP {status}: {message}", extra=item.ids
            )
        if item.attempts > self.cfg.max_retries:
            reason = f"gave up after {item.attempts} attempts: HTTP {status}: {message}"
            self.col.mark(con, [item], "failed", reason)
            self.stats.failed += 1
            return RowDone(row=item.idx, status="failed", detail=reason, extra=item.ids)
        self.stats.retries += 1
        self.col.mark(con, [item], "queued", f"HTTP {status}: {message}")
        return None

    def _mark_processed(self, con: Any, active: list[dict[str, Any]]) -> None:
        for batch in active:
            con.execute(
                "UPDATE collection_batches SET status='processed', output_file_id=?, error_file_id=?,"
                " updated_at=? WHERE id=?",
                (
                    batch["remote"].output_file_id,
                    batch["remote"].error_file_id,
                    time.time(),
                    batch["id"],
                ),
            )


class _Stop(Exception):
    """Stop the rounds (fatal error or cancel); the reason is on the runner."""
