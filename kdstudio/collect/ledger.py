"""The ledger of one collection: its items (one per dataset row and sample), their states,
and the claims of the process collecting them.

Each item's state is `queued`, `in_flight`, `retrying`, `done` or `failed` (+ reason), and
its request is keyed by a content hash of (endpoint, body, sample): an answer another
collection already paid for is reused (`cached`), duplicate prompts share one answer, and
a resumed collection asks only for what is missing. The collecting process holds a `Lease`
on the collection's row; a second process is refused while the first is alive, and the
items a dead one left in flight go back to the queue.

Requests in flight are claimed too, by content hash across collections (`request_claims`):
when two collections need the same answer at the same time (a dataset and its derived
subset, the window and the CLI), one asks and the other waits for its answer instead of
paying for it again. A request claim lives as long as the lease of the collection that
made it (its row names the claim's pid and host, and that holder is alive), so a killed
collector's claims are taken over. An answer that was paid for is always this
collection's spend, even if another collection stored the same answer first.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kdstudio.collect import cost
from kdstudio.collect.config import CollectConfig
from kdstudio.collect.runner import Request
from kdstudio.collect.store import (
    CollectionInfo,
    collection_status_counts,
    content_hash,
    create_collection,
    get_collection,
    insert_response,
    prompt_messages,
)
from kdstudio.errors import NotFound, UserError
from kdstudio.events import RowDone
from kdstudio.formatting import url
from kdstudio.teachers import Response
from kdstudio.workspace import Lease, LeaseHeld, Workspace

HEARTBEAT_S = 5.0  # how often a collector says it is alive
STALE_AFTER_S = 60.0  # silent this long, a collector on another host counts as gone
_PAGE = 1000  # queued requests read per query
AWAIT_CHECK_S = 0.25  # how often requests awaited from another collector are looked up


def dataset_row(ws: Workspace, name: str) -> Any:
    """The dataset a collection asks about (id, name, n_rows); NotFound names the known ones."""
    row = ws.query_one("SELECT id, name, n_rows FROM datasets WHERE name=?", (name,))
    if row is None:
        known = [r[0] for r in ws.query("SELECT name FROM datasets ORDER BY name")]
        raise NotFound("dataset", name, known)
    return row


class Collection:
    """One collection's bookkeeping in the workspace, shared by the live, batch and local
    runners: items, states, the response cache, spend, the process's lease."""

    def __init__(self, config: CollectConfig, ws: Workspace) -> None:
        self.config, self.ws = config, ws
        self.teacher = ws.get_teacher(config.teacher)
        self.params = config.request_params(self.teacher)
        self.dataset = dataset_row(ws, config.dataset)
        self.name = config.collection_name()
        existing = ws.query_one("SELECT params FROM collections WHERE name=?", (self.name,))
        if existing is not None and config.token_ids is None and config.top_logprobs is not None:
            # "auto" token ids keep what the collection started with, so a later probe does
            # not turn re-running the same command into "different settings".
            self.params["token_ids"] = bool(json.loads(existing[0]).get("token_ids"))
        if self.teacher.kind == "openai":
            self.endpoint = self.teacher.base_url
        else:
            self.endpoint = f"local:{self.teacher.path}:{_folder_fingerprint(self.teacher.path)}"
        # The extra HTTP headers its requests carry; the job puts in the values of secret
        # ones from the keyring (`unlock`). Never stored, never shown.
        self.headers: dict[str, str] = dict(self.teacher.headers)
        self.id: int | None = None

    def unlock(self, headers: dict[str, str]) -> None:
        """Give the requests the teacher's headers with their secret values."""
        self.headers = dict(headers)

    @property
    def secrets(self) -> list[str]:
        """Values that no message may repeat: those of the secret headers and the
        credentials of the teacher's URL."""
        return self.teacher.secret_values(self.headers)

    # -- requests and hashes ----------------------------------------------------------------
    def body(self, messages: list[dict], sample: int) -> dict[str, Any]:
        """The request for one (prompt, sample), exactly as sent and hashed."""
        if self.teacher.kind == "openai":
            from kdstudio.teachers.openai_api import request_body

            return request_body(self.teacher, self.params, messages, sample)
        from kdstudio.teachers.local import request_body

        return request_body(self.teacher, self.params, messages)

    def request_hash(self, body: dict[str, Any], sample: int) -> str:
        return content_hash(["chat", self.endpoint, body, sample])

    def _rows(self, con: Any) -> Any:
        limit = f" LIMIT {int(self.config.limit)}" if self.config.limit else ""
        return con.execute(
            "SELECT id, idx, messages, prompt, system FROM dataset_rows WHERE dataset_id=?"
            f" ORDER BY idx{limit}",
            (self.dataset["id"],),
        )

    # -- setup --------------------------------------------------------------------------------
    def open(self) -> None:
        """Create or reopen the collection, add missing items, reuse cached answers."""
        if (
            self.ws.query_one(
                "SELECT 1 FROM dataset_rows WHERE dataset_id=? LIMIT 1", (self.dataset["id"],)
            )
            is None
        ):
            raise UserError(f"dataset {self.config.dataset!r} has no rows to collect")
        self.id = create_collection(
            self.ws,
            self.name,
            dataset_id=self.dataset["id"],
            teacher_name=self.teacher.name,
            params=self.params,
            teacher_model=self.teacher.model,
            teacher_endpoint=url(self.endpoint),  # never a password on disk
        )
        n_rows = self.dataset["n_rows"]
        if self.config.limit:
            n_rows = min(n_rows, self.config.limit)
        expected = n_rows * self.config.samples
        have = self.ws.query_one(
            "SELECT COUNT(*) FROM collection_items WHERE collection_id=?", (self.id,)
        )[0]
        if have < expected or expected == 0:
            self._add_items()
        with self.ws.tx() as con:
            con.execute(
                "UPDATE collection_items SET status='done', cached=1, cost=0, error=NULL, updated_at=?"
                " WHERE collection_id=? AND status!='done' AND hash IN (SELECT hash FROM responses)",
                (time.time(), self.id),
            )

    def _add_items(self) -> None:
        """Queue an item for every (row, sample) that has none yet (read on a second
        connection while this one writes)."""
        now = time.time()
        reader = self.ws.connect()
        try:
            with self.ws.tx() as con:
                batch = []
                for row in self._rows(reader):
                    messages = prompt_messages(row["messages"], row["prompt"], row["system"])
                    for sample in range(self.config.samples):
                        hash_ = self.request_hash(self.body(messages, sample), sample)
                        batch.append((self.id, row["id"], sample, hash_, now))
                    if len(batch) >= 5000:
                        self._insert_items(con, batch)
                        batch = []
                self._insert_items(con, batch)
        finally:
            reader.close()

    @staticmethod
    def _insert_items(con: Any, batch: list[tuple]) -> None:
        con.executemany(
            "INSERT OR IGNORE INTO collection_items(collection_id, row_id, sample, hash, status, updated_at)"
            " VALUES (?,?,?,?, 'queued', ?)",
            batch,
        )

    # -- the claim --------------------------------------------------------------------------
    @property
    def lease(self) -> Lease:
        if self.id is None:
            raise RuntimeError("open() the collection before claiming it")
        return Lease(
            self.ws, "collections", self.id, every_s=HEARTBEAT_S, stale_after_s=STALE_AFTER_S
        )

    def claim(self) -> None:
        """Mark this process as the collector; refuse when another live one is."""
        now = time.time()
        try:
            with self.ws.tx() as con:
                self.lease.claim(con, status="running", message=None, updated_at=now)
                # Left over by a killed process: in flight then, so not answered (or not stored).
                con.execute(
                    "UPDATE collection_items SET status='queued' WHERE collection_id=? AND status IN"
                    " ('in_flight', 'retrying', 'failed')",
                    (self.id,),
                )
                con.execute("DELETE FROM request_claims WHERE collection_id=?", (self.id,))
        except LeaseHeld as held:
            raise UserError(
                f"collection {self.name!r} is being collected by process {held.pid} on "
                f"{held.host}; wait for it or stop it first"
            ) from None

    def save_settings(self) -> None:
        """Store every setting this collection runs with (not only the request's), so a
        front end resuming it fills its form from them (`kdstudio.resume`)."""
        self.ws.db.execute(
            "UPDATE collections SET settings=? WHERE id=?",
            (json.dumps(self.config.to_dict(), sort_keys=True), self.id),
        )

    def release(self, status: str, message: str | None) -> None:
        """Give the claim up, and the claims on requests still held, recording how the run
        ended."""
        with self.ws.tx() as con:
            self.unclaim_all(con)
            self.lease.release(con, status=status, message=message, updated_at=time.time())

    # -- claims on requests in flight ---------------------------------------------------------
    def claim_requests(
        self, con: Any, requests: list[Request]
    ) -> tuple[list[Request], list[Request], list[Request]]:
        """Claim these requests for this collector, inside the caller's write transaction:
        (to send now, awaited: another live collector has them in flight, answered: their
        answer is stored already, by another collection meanwhile)."""
        hashes = sorted({r.hash for r in requests})
        answered = _stored(con, hashes)
        held = self._held_by_others(con, [h for h in hashes if h not in answered])
        send = [r for r in requests if r.hash not in answered and r.hash not in held]
        now, pid, host = time.time(), os.getpid(), socket.gethostname()
        con.executemany(
            "INSERT INTO request_claims(hash, collection_id, pid, host, claimed_at)"
            " VALUES (?,?,?,?,?) ON CONFLICT (hash) DO UPDATE SET"
            " collection_id=excluded.collection_id, pid=excluded.pid, host=excluded.host,"
            " claimed_at=excluded.claimed_at",
            [(r.hash, self.id, pid, host, now) for r in send],
        )
        return (
            send,
            [r for r in requests if r.hash in held],
            [r for r in requests if r.hash in answered],
        )

    def awaited(self, hashes: list[str]) -> tuple[set[str], set[str]]:
        """Of requests this collector waits for: (answered meanwhile, free: no live collector
        has them in flight any more, so this one asks for them itself)."""
        con = self.ws.db
        answered = _stored(con, hashes)
        rest = [h for h in hashes if h not in answered]
        return answered, set(rest) - self._held_by_others(con, rest)

    def _held_by_others(self, con: Any, hashes: list[str]) -> set[str]:
        """The hashes another live collector has claimed (its collection's lease holder made
        the claim and is alive)."""
        held: set[str] = set()
        me = (self.id, os.getpid(), socket.gethostname())
        for chunk in _chunks(hashes):
            rows = con.execute(
                "SELECT rc.hash, rc.collection_id, rc.pid, rc.host, c.pid AS holder,"
                " c.host AS holder_host, c.heartbeat FROM request_claims rc"
                " JOIN collections c ON c.id = rc.collection_id"
                f" WHERE rc.hash IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for r in rows:
                if (r["collection_id"], r["pid"], r["host"]) == me:
                    continue
                if (r["pid"], r["host"]) != (r["holder"], r["holder_host"]):
                    continue  # made by an earlier holder of that collection's lease
                if Lease.holder_alive(r["pid"], r["host"], r["heartbeat"], STALE_AFTER_S):
                    held.add(r["hash"])
        return held

    def unclaim_all(self, con: Any) -> None:
        """Give up every request claim this collector holds (nothing of it is in flight)."""
        con.execute(
            "DELETE FROM request_claims WHERE collection_id=? AND pid=? AND host=?",
            (self.id, os.getpid(), socket.gethostname()),
        )

    def _unclaim(self, con: Any, requests: list[Request]) -> None:
        con.executemany(
            "DELETE FROM request_claims WHERE hash=? AND collection_id=? AND pid=?",
            [(r.hash, self.id, os.getpid()) for r in requests],
        )

    # -- items -------------------------------------------------------------------------------
    def queued(self, after: tuple[int, int] = (-1, -1), limit: int = _PAGE) -> list[Request]:
        """Up to `limit` queued requests after (row_id, sample), in dataset order."""
        rows = self.ws.query(
            "SELECT ci.row_id, ci.sample, ci.hash, ci.attempts, d.idx, d.messages, d.prompt, d.system"
            " FROM collection_items ci JOIN dataset_rows d ON d.id = ci.row_id"
            " WHERE ci.collection_id=? AND ci.status='queued' AND (ci.row_id, ci.sample) > (?, ?)"
            " ORDER BY ci.row_id, ci.sample LIMIT ?",  # an index range (rows in dataset order)
            (self.id, after[0], after[1], limit),
        )
        requests = []
        for r in rows:
            messages = prompt_messages(r["messages"], r["prompt"], r["system"])
            requests.append(
                Request(
                    r["row_id"],
                    r["sample"],
                    r["hash"],
                    self.body(messages, r["sample"]),
                    cost.approx_prompt_tokens(messages),
                    r["idx"],
                )
            )
        return requests

    def iter_queued(self, page: int = _PAGE) -> Iterator[Request]:
        """All queued requests in dataset order, read page by page."""
        after = (-1, -1)
        while True:
            requests = self.queued(after, page)
            yield from requests
            if len(requests) < page:
                return
            after = (requests[-1].row_id, requests[-1].sample)

    def mark(
        self,
        con: Any,
        requests: list[Request],
        status: str,
        error: str | None = None,
        bump: bool = False,
    ) -> None:
        """Set the state (and reason) of these items; `bump` counts an attempt. Back in the
        queue or failed, they are no longer in flight: their claims go."""
        if status in ("queued", "failed"):
            self._unclaim(con, requests)
        con.executemany(
            f"UPDATE collection_items SET status=?, error=?, updated_at=?{', attempts=attempts+1' if bump else ''}"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            [(status, error, time.time(), self.id, r.row_id, r.sample) for r in requests],
        )

    def store(self, con: Any, request: Request, response: Response) -> float:
        """Commit one answer (inside the caller's transaction) and release its claim;
        returns what it cost. An answer that came back was paid for, so its cost is this
        collection's spend even when another collection stored the same answer first."""
        insert_response(con, request.hash, response)
        self._unclaim(con, [request])
        con.execute(
            "UPDATE collection_items SET status='done', error=NULL, cost=?, cached=0, updated_at=?"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            (response.cost, time.time(), self.id, request.row_id, request.sample),
        )
        return response.cost

    def done_from_cache(self, con: Any, request: Request) -> RowDone:
        """`request` was answered by another collection meanwhile: done, at no cost; the
        event that says so."""
        self.mark_cached(con, [request])
        return RowDone(row=request.idx, status="done", extra={**request.ids, "cached": True})

    def mark_cached(self, con: Any, requests: list[Request]) -> None:
        """Items whose answer is already stored (a duplicate prompt answered meanwhile)."""
        con.executemany(
            "UPDATE collection_items SET status='done', error=NULL, cost=0, cached=1, updated_at=?"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            [(time.time(), self.id, r.row_id, r.sample) for r in requests],
        )

    def spent(self) -> float:
        """USD paid for this collection's answers so far (0 before it exists)."""
        if self.id is None:
            row = self.ws.query_one("SELECT id FROM collections WHERE name=?", (self.name,))
            if row is None:
                return 0.0
            self.id = int(row[0])
        return float(
            self.ws.query_one(
                "SELECT COALESCE(SUM(cost), 0) FROM collection_items WHERE collection_id=?",
                (self.id,),
            )[0]
        )

    def counts(self) -> dict[str, int]:
        return collection_status_counts(self.ws, self.id)

    def top_failure(self) -> str:
        """The reason most failed items give (the one line a failed job ends with)."""
        row = self.ws.query_one(
            "SELECT error FROM collection_items WHERE collection_id=? AND status='failed'"
            " GROUP BY error ORDER BY COUNT(*) DESC LIMIT 1",
            (self.id,),
        )
        return (row[0] if row else None) or "no reason recorded"

    def cached_count(self) -> int:
        return self.ws.query_one(
            "SELECT COUNT(*) FROM collection_items WHERE collection_id=? AND cached=1", (self.id,)
        )[0]

    # -- cost ----------------------------------------------------------------------------------
    def uncached_prompt_tokens(self) -> Iterator[int]:
        """Approximate prompt tokens of each request not answered yet (reads only)."""
        reader = self.ws.connect()
        try:
            for row in self._rows(reader):
                messages = prompt_messages(row["messages"], row["prompt"], row["system"])
                for sample in range(self.config.samples):
                    hash_ = self.request_hash(self.body(messages, sample), sample)
                    if (
                        reader.execute("SELECT 1 FROM responses WHERE hash=?", (hash_,)).fetchone()
                        is None
                    ):
                        yield cost.approx_prompt_tokens(messages)
        finally:
            reader.close()

    def estimate(self, prompt_tokens_each: Iterable[int] | None = None) -> cost.CostEstimate:
        """What the queued requests (or those given) could cost."""
        if prompt_tokens_each is None:
            prompt_tokens_each = (r.prompt_tokens for r in self.iter_queued())
        return cost.estimate(self.teacher, self.config, prompt_tokens_each, self.spent())

    def worst_cost(self, request: Request, prompt_ratio: float) -> float:
        return cost.worst_cost(self.teacher, self.config, request.prompt_tokens, prompt_ratio)


def awaited_note(requests: list[Request], until: str = "their answers") -> str:
    """What a collector says when it waits for requests another one has in flight."""
    n = len({r.hash for r in requests})
    what = "request is" if n == 1 else "requests are"
    return (
        f"{n:,} {what} in flight for another collection: waiting for {until} "
        "instead of paying for them again"
    )


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stored(con: Any, hashes: list[str]) -> set[str]:
    """The hashes whose answer is in the response cache."""
    found: set[str] = set()
    for chunk in _chunks(hashes):
        rows = con.execute(
            f"SELECT hash FROM responses WHERE hash IN ({','.join('?' * len(chunk))})", chunk
        )
        found.update(r[0] for r in rows)
    return found


def _folder_fingerprint(path: str | None) -> str:
    """Names, sizes and times of a local model folder's files: a changed model (new weights
    in the same folder) asks again instead of reusing the old model's answers."""
    folder = Path(path or "")
    if not folder.is_dir():
        return "missing"
    parts = sorted(
        f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}"
        for f in folder.iterdir()
        if f.is_file()
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def interrupted_collections(ws: Workspace) -> list[CollectionInfo]:
    """Collections a run left unfinished, to offer for resume when a workspace opens.

    Cancelled, stopped, incomplete or failed ones with rows left, and ones marked running
    whose collector is gone (see `Lease.holder_alive`).
    """
    found = []
    for row in ws.query(
        "SELECT name, status, pid, host, heartbeat FROM collections WHERE source='teacher'"
    ):
        if row["status"] == "running":
            if Lease.holder_alive(row["pid"], row["host"], row["heartbeat"], STALE_AFTER_S):
                continue
        elif row["status"] not in ("cancelled", "incomplete", "stopped", "failed"):
            continue
        info = get_collection(ws, row["name"])
        if info.counts.get("done", 0) < info.counts.get("total", 0):
            found.append(info)
    return found
