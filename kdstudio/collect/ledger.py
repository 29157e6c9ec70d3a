"""The ledger of one collection: its items (one per dataset row and sample), their states,
and the claim of the process collecting them.

Each item's state is `queued`, `in_flight`, `retrying`, `done` or `failed` (+ reason), and
its request is keyed by a content hash of (endpoint, body, sample): an answer another
collection already paid for is reused (`cached`), duplicate prompts share one answer, and
a resumed collection asks only for what is missing. The collecting process holds a `Lease`
on the collection's row; a second process is refused while the first is alive, and the
items a dead one left in flight go back to the queue.
"""

from __future__ import annotations

import hashlib
import json
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
from kdstudio.teachers import Response
from kdstudio.workspace import Lease, LeaseHeld, Workspace

HEARTBEAT_S = 5.0  # how often a collector says it is alive
STALE_AFTER_S = 60.0  # silent this long, a collector on another host counts as gone
_PAGE = 1000  # queued requests read per query


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
        self.id: int | None = None

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
            teacher_endpoint=self.endpoint,
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
        """Give the claim up, recording how the run ended."""
        self.lease.release(status=status, message=message, updated_at=time.time())

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
        """Set the state (and reason) of these items; `bump` counts an attempt."""
        con.executemany(
            f"UPDATE collection_items SET status=?, error=?, updated_at=?{', attempts=attempts+1' if bump else ''}"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            [(status, error, time.time(), self.id, r.row_id, r.sample) for r in requests],
        )

    def store(self, con: Any, request: Request, response: Response) -> float:
        """Commit one answer (inside the caller's transaction); returns what it cost here."""
        fresh = insert_response(con, request.hash, response)
        paid = response.cost if fresh else 0.0
        con.execute(
            "UPDATE collection_items SET status='done', error=NULL, cost=?, cached=?, updated_at=?"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            (paid, 0 if fresh else 1, time.time(), self.id, request.row_id, request.sample),
        )
        return paid

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
