"""The collection job: send every prompt of a dataset to a teacher and keep every answer.

    summary = collect(CollectConfig(teacher="gpt", dataset="prompts"), ws, sink, cancel)

What it guarantees:
- Every answer is committed as it arrives, keyed by a content hash of (endpoint, model,
  parameters, messages, sample). Re-running resumes; answers another collection already
  paid for are reused (`cached`), and duplicate prompts within a collection are sent once,
  so no request is paid twice. After a kill -9 the only requests repeated are those that
  were in flight.
- Each (row, sample) has a state: queued, in_flight, retrying, done, failed + reason.
- Concurrency starts at `concurrency` and adapts: a 429 pauses launches for its
  `retry-after` and lowers the limit (at most once per second); a window of successes
  raises it again, up to the setting.
- Transient errors retry with jittered exponential backoff up to `max_retries` (429s do
  not count: the server said "later", not "no"); 400/404 fail the row with the server's
  message; 401/403 and an exhausted quota stop the job with one clear message.
- Before starting, `estimate_cost` counts prompt tokens (an approximation: ceil(chars / 4)
  + 3 per message, no tokenizer download; real usage is stored per row as it arrives).
  `budget` stops launching when the next request could exceed it (worst case: its prompt
  estimate with a safety margin learnt from real usage, plus max_tokens of output).
- Cancel (Ctrl-C) stops launching, lets in-flight requests finish and stores them.
- `batch_api` goes through the Batch API instead (half price), see `kdstudio.teachers.batch`;
  a local teacher (`kind = "local"`) runs transformers in this process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kdstudio import outputs
from kdstudio.config import Section, TeacherConfig, setting
from kdstudio.errors import Cancelled, JobFailed, NotFound, UserError
from kdstudio.events import CancelToken, Finished, Log, NullSink, Progress, RowDone, Sink
from kdstudio.outputs import (
    Response,
    collection_id,
    content_hash,
    create_collection,
    insert_response,
    prompt_messages,
)
from kdstudio.workspace import Workspace, pid_alive

MAX_RETRY_AFTER_S = 120.0
MAX_RATE_LIMITED = 1000  # 429s of one row before it fails (they do not use up max_retries)
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


@dataclass
class CollectConfig(Section):
    """Settings of one collection run (the CLI's `collect` flags, the GUI's Collect panel)."""

    _section: ClassVar[str] = "collect"

    teacher: str = setting(help="Name of the teacher to ask.")
    dataset: str = setting(help="Name of the prompt dataset.")
    name: str | None = setting(None, "Collection name (default: DATASET.TEACHER).")
    samples: int = setting(1, "Answers per prompt.", min=1, max=64)
    max_tokens: int = setting(512, "Most tokens per answer.", min=1, max=131072)
    temperature: float = setting(1.0, "Sampling temperature.", min=0.0, max=2.0)
    top_p: float | None = setting(
        None, "Nucleus sampling mass (unset: the server's default).", min=0.0, max=1.0
    )
    seed: int | None = setting(None, "Seed; sample i uses seed + i (unset: none sent).")
    stop: list[str] = setting(help="Stop sequences.", default_factory=list)
    top_logprobs: int | None = setting(
        None,
        "Ask for logprobs with this many alternatives per token (0-20; unset: text only).",
        min=0,
        max=20,
    )
    token_ids: bool | None = setting(
        None,
        "Ask for token ids (vLLM return_tokens_as_token_ids); unset: when the probe found them.",
    )
    concurrency: int = setting(
        8, "Requests in flight at most (adapts down on 429).", min=1, max=256
    )
    adaptive: bool = setting(True, "Lower concurrency on 429 and raise it again on success.")
    max_retries: int = setting(
        8, "Retries of a transient error before the row fails.", min=0, max=100
    )
    timeout: float = setting(300.0, "Seconds before one request times out.", min=1.0)
    budget: float | None = setting(
        None, "Stop launching requests before spending more than this (USD).", min=0.0
    )
    batch_api: bool = setting(False, "Submit through the Batch API (half price, up to 24 h).")
    batch_poll_s: float = setting(15.0, "Seconds between Batch API status checks.", min=0.01)
    local_batch_size: int = setting(
        8, "Prompts per generate() call of a local teacher.", min=1, max=1024
    )
    limit: int | None = setting(None, "Only the first N prompts of the dataset.", min=1)

    def collection_name(self) -> str:
        return self.name or f"{self.dataset}.{self.teacher}"[:64]

    def request_params(self, teacher: TeacherConfig) -> dict[str, Any]:
        """The parameters that shape the answers (stored with the collection and hashed)."""
        token_ids = self.token_ids
        if token_ids is None:
            token_ids = (
                bool((teacher.capabilities or {}).get("token_ids")) and teacher.kind == "openai"
            )
        return {
            "samples": self.samples,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop),
            "top_logprobs": self.top_logprobs,
            "token_ids": bool(token_ids) and self.top_logprobs is not None,
        }


# -- prompt tokens and cost -----------------------------------------------------------------


def approx_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens without a tokenizer: ceil(chars / 4) + 3 per message (chat overhead).

    Close for English with GPT-style tokenizers; real counts come back with each answer.
    """
    total = 3
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        total += 3 + math.ceil(len(content) / 4)
    return total


@dataclass
class CostEstimate:
    """What the remaining requests could cost, before starting."""

    requests: int
    prompt_tokens: int
    max_completion_tokens: int
    usd: float  # prompt tokens at price_in + max_tokens at price_out (an upper bound on output)
    spent: float  # already paid in this collection
    batch: bool
    priced: bool  # False when the teacher has no prices (then usd is 0)
    local: bool = False  # a local teacher: no cost

    def line(self) -> str:
        if self.local:
            price = "free (a local teacher)"
        elif self.priced:
            price = f"up to ${self.usd:,.4f}"
        else:
            price = "cost unknown (the teacher has no prices: set --price-in/--price-out)"
        tokens = f"~{self.prompt_tokens:,} prompt tokens + at most {self.max_completion_tokens:,} output tokens"
        spent = f"; ${self.spent:,.4f} spent so far" if self.spent else ""
        batch = " at Batch API prices" if self.batch else ""
        return f"{self.requests:,} requests to make: {tokens}, {price}{batch}{spent}"


# -- the job --------------------------------------------------------------------------------


@dataclass(eq=False)
class Item:
    row_id: int
    sample: int
    hash: str
    body: dict[str, Any]
    prompt_tokens: int
    idx: int = 0
    attempts: int = 0
    ready_at: float = 0.0
    reserved: float = 0.0
    rate_limited: int = 0  # 429s: the server's "later", not the row's fault


@dataclass
class CollectSummary:
    collection: str
    status: str
    counts: dict[str, int]
    spent: float
    requests: int
    retries: int
    cached: int
    elapsed: float
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dataset_row(ws: Workspace, name: str) -> Any:
    row = ws.query_one("SELECT id, name, n_rows FROM datasets WHERE name=?", (name,))
    if row is None:
        known = [r[0] for r in ws.query("SELECT name FROM datasets ORDER BY name")]
        raise NotFound("dataset", name, known)
    return row


class Collection:
    """One collection's bookkeeping in the workspace, shared by the live, batch and local
    runners: items, states, the response cache, spend, the process claim."""

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
        if self.teacher.kind == "openai":
            from kdstudio.teachers.openai_api import request_body

            return request_body(self.teacher, self.params, messages, sample)
        body = {
            "model": self.teacher.model or os.path.basename(str(self.teacher.path)),
            "messages": messages,
        }
        body.update({k: v for k, v in self.params.items() if k not in ("samples", "token_ids")})
        return body

    def item_hash(self, body: dict[str, Any], sample: int) -> str:
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
        now = time.time()
        reader = self.ws.connect()
        try:
            self._add_items_from(reader, now)
        finally:
            reader.close()

    def _add_items_from(self, reader: Any, now: float) -> None:
        with self.ws.tx() as con:
            batch = []
            for row in self._rows(reader):
                messages = prompt_messages(row["messages"], row["prompt"], row["system"])
                for sample in range(self.config.samples):
                    batch.append(
                        (
                            self.id,
                            row["id"],
                            sample,
                            self.item_hash(self.body(messages, sample), sample),
                            now,
                        )
                    )
                if len(batch) >= 5000:
                    self._insert_items(con, batch)
                    batch = []
            self._insert_items(con, batch)

    @staticmethod
    def _insert_items(con: Any, batch: list[tuple]) -> None:
        con.executemany(
            "INSERT OR IGNORE INTO collection_items(collection_id, row_id, sample, hash, status, updated_at)"
            " VALUES (?,?,?,?, 'queued', ?)",
            batch,
        )

    def claim(self) -> None:
        """Mark this process as the collector; refuse when another live one is."""
        row = self.ws.query_one(
            "SELECT pid, host, heartbeat FROM collections WHERE id=?", (self.id,)
        )
        host = socket.gethostname()
        if (
            row["pid"]
            and row["pid"] != os.getpid()
            and (row["heartbeat"] or 0) > time.time() - STALE_AFTER_S
        ):
            alive = row["host"] != host or pid_alive(row["pid"])
            if alive:
                raise UserError(
                    f"collection {self.name!r} is being collected by process {row['pid']} on "
                    f"{row['host']}; wait for it or stop it first"
                )
        with self.ws.tx() as con:
            con.execute(
                "UPDATE collections SET pid=?, host=?, heartbeat=?, status='running', message=NULL,"
                " updated_at=? WHERE id=?",
                (os.getpid(), host, time.time(), time.time(), self.id),
            )
            # Left over by a killed process: in flight then, so not answered (or not stored).
            con.execute(
                "UPDATE collection_items SET status='queued' WHERE collection_id=? AND status IN"
                " ('in_flight', 'retrying', 'failed')",
                (self.id,),
            )

    def heartbeat(self, con: Any = None) -> None:
        (con or self.ws.db).execute(
            "UPDATE collections SET heartbeat=? WHERE id=?", (time.time(), self.id)
        )

    @contextmanager
    def beating(self, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """Keep the heartbeat fresh from a helper thread (its own connection) while a long
        call holds this one: a local model's generate can take longer than STALE_AFTER_S,
        and another process must not take the collection over meanwhile."""
        stop = threading.Event()

        def beat() -> None:
            con = self.ws.connect()
            try:
                while not stop.wait(every_s):
                    self.heartbeat(con)
            finally:
                con.close()

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def release(self, status: str, message: str | None) -> None:
        self.ws.db.execute(
            "UPDATE collections SET pid=NULL, status=?, message=?, updated_at=? WHERE id=?",
            (status, message, time.time(), self.id),
        )

    # -- items -------------------------------------------------------------------------------
    def queued_items(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[Item]:
        rows = self.ws.query(
            "SELECT ci.row_id, ci.sample, ci.hash, ci.attempts, d.idx, d.messages, d.prompt, d.system"
            " FROM collection_items ci JOIN dataset_rows d ON d.id = ci.row_id"
            " WHERE ci.collection_id=? AND ci.status='queued' AND (ci.row_id, ci.sample) > (?, ?)"
            " ORDER BY ci.row_id, ci.sample LIMIT ?",  # an index range (rows in dataset order)
            (self.id, after[0], after[1], limit),
        )
        items = []
        for r in rows:
            messages = prompt_messages(r["messages"], r["prompt"], r["system"])
            body = self.body(messages, r["sample"])
            items.append(
                Item(
                    r["row_id"],
                    r["sample"],
                    r["hash"],
                    body,
                    approx_prompt_tokens(messages),
                    r["idx"],
                )
            )
        return items

    def iter_queued(self, page: int = 1000):
        """All queued items in dataset order, read page by page."""
        after = (-1, -1)
        while True:
            items = self.queued_items(after, page)
            yield from items
            if len(items) < page:
                return
            after = (items[-1].row_id, items[-1].sample)

    def mark(
        self, con: Any, items: list[Item], status: str, error: str | None = None, bump: bool = False
    ) -> None:
        con.executemany(
            f"UPDATE collection_items SET status=?, error=?, updated_at=?{', attempts=attempts+1' if bump else ''}"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            [(status, error, time.time(), self.id, it.row_id, it.sample) for it in items],
        )

    def store(self, con: Any, item: Item, response: Response) -> float:
        """Commit one answer (inside the caller's transaction); returns what it cost here."""
        fresh = insert_response(con, item.hash, response)
        cost = response.cost if fresh else 0.0
        con.execute(
            "UPDATE collection_items SET status='done', error=NULL, cost=?, cached=?, updated_at=?"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            (cost, 0 if fresh else 1, time.time(), self.id, item.row_id, item.sample),
        )
        return cost

    def mark_cached(self, con: Any, items: list[Item]) -> None:
        """Items whose answer is already stored (a duplicate prompt answered meanwhile)."""
        con.executemany(
            "UPDATE collection_items SET status='done', error=NULL, cost=0, cached=1, updated_at=?"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            [(time.time(), self.id, it.row_id, it.sample) for it in items],
        )

    def spent(self) -> float:
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
        from kdstudio.outputs import collection_status_counts

        return collection_status_counts(self.ws, self.id)

    def uncached_prompt_tokens(self) -> Iterator[int]:
        """Approximate prompt tokens of each request not answered yet (reads only)."""
        reader = self.ws.connect()
        try:
            for row in self._rows(reader):
                messages = prompt_messages(row["messages"], row["prompt"], row["system"])
                for sample in range(self.config.samples):
                    hash_ = self.item_hash(self.body(messages, sample), sample)
                    if (
                        reader.execute("SELECT 1 FROM responses WHERE hash=?", (hash_,)).fetchone()
                        is None
                    ):
                        yield approx_prompt_tokens(messages)
        finally:
            reader.close()

    def estimate(self, prompt_tokens_each: Iterable[int] | None = None) -> CostEstimate:
        """What the queued requests (or those given) could cost."""
        if prompt_tokens_each is None:
            prompt_tokens_each = (item.prompt_tokens for item in self.iter_queued())
        prompt_tokens = requests = 0
        for n in prompt_tokens_each:
            requests += 1
            prompt_tokens += n
        t = self.teacher
        batch = self.config.batch_api
        usd = (prompt_tokens * t.price_in + requests * self.config.max_tokens * t.price_out) / 1e6
        return CostEstimate(
            requests=requests,
            prompt_tokens=prompt_tokens,
            max_completion_tokens=requests * self.config.max_tokens,
            usd=usd * (0.5 if batch else 1.0),
            spent=self.spent(),
            batch=batch,
            priced=bool(t.price_in or t.price_out),
            local=t.kind == "local",
        )

    def worst_cost(self, item: Item, prompt_ratio: float) -> float:
        t = self.teacher
        usd = (
            item.prompt_tokens * prompt_ratio * t.price_in + self.config.max_tokens * t.price_out
        ) / 1e6
        return usd * (0.5 if self.config.batch_api else 1.0)


def _folder_fingerprint(path: str | None) -> str:
    """Names, sizes and times of a local model folder's files: a changed model (new weights
    in the same folder) asks again instead of reusing the old model's answers."""
    import hashlib

    folder = Path(path or "")
    if not folder.is_dir():
        return "missing"
    parts = sorted(
        f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}"
        for f in folder.iterdir()
        if f.is_file()
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def interrupted_collections(ws: Workspace) -> list[outputs.CollectionInfo]:
    """Collections a run left unfinished, to offer for resume when a workspace opens.

    Cancelled, stopped, incomplete or failed ones with rows left, and ones marked running
    whose process is gone (dead pid on this host, or no heartbeat for STALE_AFTER_S).
    """
    found = []
    for row in ws.query(
        "SELECT name, status, pid, host, heartbeat FROM collections WHERE source='teacher'"
    ):
        if row["status"] == "running":
            stale = (row["heartbeat"] or 0) < time.time() - STALE_AFTER_S
            here = row["host"] == socket.gethostname()
            dead = here and row["pid"] and not pid_alive(row["pid"])
            if row["pid"] and not (stale or dead):
                continue
        elif row["status"] not in ("cancelled", "incomplete", "stopped", "failed"):
            continue
        info = outputs.get_collection(ws, row["name"])
        if info.counts.get("done", 0) < info.counts.get("total", 0):
            found.append(info)
    return found


def estimate_cost(config: CollectConfig, ws: Workspace) -> CostEstimate:
    """The cost of what is left to collect; writes nothing and sends nothing (the GUI shows
    it before the Start button)."""
    col = Collection(config, ws)
    return col.estimate(col.uncached_prompt_tokens())


# -- adaptive concurrency ---------------------------------------------------------------------


class AdaptiveLimit:
    """AIMD concurrency: x0.7 on a 429 (at most once per `cooldown` s), +1 after `limit`
    successes in a row, between 1 and the configured maximum."""

    def __init__(self, maximum: int, *, adaptive: bool = True, cooldown: float = 1.0) -> None:
        self.maximum, self.adaptive, self.cooldown = maximum, adaptive, cooldown
        self.value = float(maximum)
        self._streak = 0
        self._last_cut = -math.inf

    @property
    def limit(self) -> int:
        return max(1, int(self.value))

    def on_success(self) -> None:
        if not self.adaptive or self.value >= self.maximum:
            return
        self._streak += 1
        if self._streak >= self.limit:
            self._streak = 0
            self.value = min(self.maximum, self.value + 1)

    def on_rate_limited(self, now: float) -> None:
        self._streak = 0
        if self.adaptive and now - self._last_cut >= self.cooldown:
            self._last_cut = now
            self.value = max(1.0, self.value * 0.7)


def backoff(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry `attempt` (1-based): the server's retry-after (plus up to 10%
    jitter), else 0.5 * 2^(attempt-1) capped at 30 s with full jitter in [50%, 100%]."""
    if retry_after is not None:
        return min(MAX_RETRY_AFTER_S, retry_after) * (1 + 0.1 * rng.random())
    return min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + 0.5 * rng.random())


class _Stats:
    def __init__(self, total: int, spent: float) -> None:
        self.total, self.spent = total, spent
        self.done = self.failed = self.retries = self.requests = 0
        self.start = time.monotonic()
        self.last_emit = 0.0


# -- the live runner (asyncio + the openai client) ----------------------------------------------


class LiveRunner:
    """Runs the queued items of a collection against an OpenAI-compatible teacher."""

    def __init__(self, col: Collection, sink: Sink, cancel: CancelToken, key: str | None) -> None:
        self.col, self.sink, self.cancel, self.key = col, sink, cancel, key
        self.cfg = col.config
        self.limit = AdaptiveLimit(self.cfg.concurrency, adaptive=self.cfg.adaptive)
        self.rng = random.Random()
        self.retry: list[Item] = []
        self.pause_until = 0.0
        self.reserved = 0.0
        self.prompt_ratio = 1.5  # safety margin on approximate prompt tokens, learnt as we go
        self.stop_reason: str | None = None
        self.fatal: str | None = None
        self.stats = _Stats(0, 0.0)
        # Identical requests (duplicate prompts) are sent once: the others follow the leader.
        self.leader_of: dict[str, Item] = {}
        self.followers: dict[str, list[Item]] = {}

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from kdstudio.teachers.openai_api import make_client

        col = self.col
        self.stats = _Stats(col.counts()["queued"], col.spent())
        client = make_client(
            col.teacher, self.key, max_connections=self.cfg.concurrency, timeout=self.cfg.timeout
        )
        try:
            await self._loop(client)
        finally:
            await client.close()

    async def _loop(self, client: Any) -> None:
        queue = self.col.iter_queued()
        pending: deque[Item] = deque()
        exhausted = False
        in_flight = 0
        finished: list[tuple[Item, Any]] = []
        loop = asyncio.get_running_loop()
        wake: list[asyncio.Future] = []

        def wake_up() -> None:
            if wake and not wake[0].done():
                wake[0].set_result(None)

        def on_done(item: Item, task: asyncio.Task) -> None:
            finished.append((item, task.result()))
            wake_up()

        last_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if self.cancel.cancelled and not self.stop_reason:
                self.stop_reason = self.cancel.reason or "cancelled"
            if finished:
                done, finished[:] = list(finished), []
                in_flight -= len(done)
                self._handle(done)
            if not pending and not exhausted:
                pending.extend(next(queue, None) for _ in range(256))
                while pending and pending[-1] is None:
                    pending.pop()
                    exhausted = True
            launch = self._launchable(pending, in_flight, now)
            if launch:
                with self.col.ws.tx() as con:
                    self.col.mark(con, launch, "in_flight", bump=True)
                for item in launch:
                    item.attempts += 1
                    self.stats.requests += 1
                    in_flight += 1
                    task = loop.create_task(self._attempt(client, item))
                    task.add_done_callback(functools.partial(on_done, item))
            nothing_left = not pending and exhausted and not self.retry
            if not in_flight and (self.stop_reason or self.fatal or nothing_left):
                break
            if now - last_beat > HEARTBEAT_S:
                last_beat = now
                self.col.heartbeat()
            self._progress()
            if not finished:  # sleep until a request ends, a retry is due, or 0.1 s (cancel)
                wake[:] = [loop.create_future()]
                timer = loop.call_later(self._idle_wait(now), wake_up)
                await wake[0]
                timer.cancel()
        self._progress(force=True)
        self._requeue(list(pending) + self.retry)

    def _idle_wait(self, now: float) -> float:
        waits = [0.1]
        if self.pause_until > now:
            waits.append(self.pause_until - now)
        if self.retry:
            waits.append(max(0.001, min(it.ready_at for it in self.retry) - now))
        return max(0.001, min(waits))

    def _launchable(self, pending: deque[Item], in_flight: int, now: float) -> list[Item]:
        if self.stop_reason or self.fatal or now < self.pause_until:
            return []
        out: list[Item] = []
        room = self.limit.limit - in_flight
        while room > 0:
            item = self._next_ready(pending, now)
            if item is None:
                break
            leader = self.leader_of.get(item.hash)
            if leader is not None and leader is not item:
                self.followers[item.hash].append(item)
                continue
            if not self._affordable(item):
                self._put_back(item, pending)
                break
            out.append(item)
            self.leader_of[item.hash] = item
            self.followers.setdefault(item.hash, [])
            room -= 1
        return out

    def _next_ready(self, pending: deque[Item], now: float) -> Item | None:
        if self.retry:
            ready = min(self.retry, key=lambda it: it.ready_at)
            if ready.ready_at <= now:
                self.retry.remove(ready)
                return ready
        return pending.popleft() if pending else None

    def _put_back(self, item: Item, pending: deque[Item]) -> None:
        if item.attempts:
            self.retry.append(item)
        else:
            pending.appendleft(item)

    def _affordable(self, item: Item) -> bool:
        budget = self.cfg.budget
        if budget is None:
            return True
        worst = self.col.worst_cost(item, self.prompt_ratio)
        if self.stats.spent + self.reserved + worst > budget:
            self.stop_reason = (
                f"budget reached: ${self.stats.spent:,.4f} spent of ${budget:,.4f}; the next request "
                f"could cost up to ${worst:,.4f}; re-run with a larger --budget to continue"
            )
            self.sink.emit(Log(self.stop_reason, level="warning"))
            return False
        self.reserved += worst
        item.reserved = worst
        return True

    async def _attempt(self, client: Any, item: Item) -> Any:
        from kdstudio.teachers.openai_api import Outcome, classify, parse_completion, split_body

        t0 = time.monotonic()
        try:
            # The raw response skips building pydantic objects for every logprob (about a
            # fifth of the client's CPU per request); the JSON is read the same way.
            raw = await client.chat.completions.with_raw_response.create(**split_body(item.body))
            completion = json.loads(raw.http_response.content)
            response = parse_completion(completion, self.col.teacher, latency=time.monotonic() - t0)
            return Outcome("ok", response=response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes
            return classify(exc, self.key)

    def _handle(self, results: list[tuple[Item, Any]]) -> None:
        now = time.monotonic()
        events: list[RowDone] = []
        with self.col.ws.tx() as con:
            for item, outcome in results:
                self.reserved -= item.reserved
                item.reserved = 0.0
                event, final = self._apply(con, item, outcome, now)
                if final:
                    events += self._settle_followers(con, item, event)
                if event is not None:
                    events.append(event)
        for event in events:
            self.sink.emit(event)

    def _settle_followers(self, con: Any, leader: Item, event: RowDone | None) -> list[RowDone]:
        """The leader of a request reached a final state: its duplicates share it."""
        self.leader_of.pop(leader.hash, None)
        followers = self.followers.pop(leader.hash, [])
        if not followers or event is None:
            return []  # stopped: followers are still queued in the workspace
        if event.status == "done":
            self.col.mark_cached(con, followers)
            self.stats.done += len(followers)
        else:
            self.col.mark(con, followers, "failed", event.detail)
            self.stats.failed += len(followers)
        return [
            RowDone(
                row=f.idx,
                status=event.status,
                detail=event.detail,
                extra={"row_id": f.row_id, "sample": f.sample},
            )
            for f in followers
        ]

    def _apply(self, con: Any, item: Item, outcome: Any, now: float) -> tuple[RowDone | None, bool]:
        """Store one outcome; (the row's event, whether the row reached a final state)."""
        if outcome.kind == "ok":
            resp = outcome.response
            if resp.prompt_tokens and item.prompt_tokens:
                self.prompt_ratio = max(
                    self.prompt_ratio * 0.99, 1.1 * resp.prompt_tokens / item.prompt_tokens, 1.0
                )
            self.stats.spent += self.col.store(con, item, resp)
            self.stats.done += 1
            self.limit.on_success()
            extra = {"cost": resp.cost, "tokens": resp.completion_tokens}
            ids = {"row_id": item.row_id, "sample": item.sample}
            return RowDone(row=item.idx, status="done", extra={**ids, **extra}), True
        if outcome.kind == "fatal":
            from kdstudio.teachers.openai_api import fatal_message

            self.fatal = self.fatal or fatal_message(self.col.teacher, outcome)
            self.col.mark(con, [item], "queued", outcome.message)
            return None, True
        if outcome.rate_limited:
            item.rate_limited += 1
        retries_left = item.attempts - item.rate_limited <= self.cfg.max_retries
        if outcome.kind == "transient" and retries_left and item.rate_limited <= MAX_RATE_LIMITED:
            if self.stop_reason:
                self.col.mark(con, [item], "queued", outcome.message)
                return None, True
            delay = backoff(item.attempts, outcome.retry_after, self.rng)
            if outcome.rate_limited:
                self.limit.on_rate_limited(now)
                self.pause_until = max(self.pause_until, now + delay)
            item.ready_at = now + delay
            self.retry.append(item)
            self.stats.retries += 1
            self.col.mark(con, [item], "retrying", outcome.message)
            return None, False
        reason = outcome.message
        if outcome.kind == "transient":
            reason = f"gave up after {item.attempts} attempts: {reason}"
        self.col.mark(con, [item], "failed", reason)
        self.stats.failed += 1
        ids = {"row_id": item.row_id, "sample": item.sample}
        return RowDone(row=item.idx, status="failed", detail=reason, extra=ids), True

    def _requeue(self, items: list[Item]) -> None:
        with self.col.ws.tx() as con:
            self.col.mark(con, [it for it in items if it is not None], "queued")

    def _progress(self, force: bool = False) -> None:
        s = self.stats
        now = time.monotonic()
        if not force and now - s.last_emit < 0.25:
            return
        s.last_emit = now
        extra = {
            "spend": f"${s.spent:,.4f}",
            "retries": s.retries,
            "failed": s.failed,
            "conc": self.limit.limit,
        }
        self.sink.emit(Progress(done=s.done + s.failed, total=s.total, unit="request", extra=extra))


# -- entry point ---------------------------------------------------------------------------


def collect(
    config: CollectConfig,
    ws: Workspace,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
    *,
    estimate_sink: Any = None,
) -> CollectSummary:
    """Run (or resume) a collection. Raises Cancelled (after storing every answer that came
    back) when cancelled, JobFailed when the teacher refuses the key, UserError on bad input."""
    sink = sink or NullSink()
    cancel = cancel or CancelToken()
    col = Collection(config, ws)
    col.open()
    col.claim()
    from kdstudio.resume import save_collect_settings  # (resume imports this module)

    save_collect_settings(ws, col.id, config)  # so a later resume starts from them
    start = time.monotonic()
    status, message = "failed", "stopped by an error"
    try:
        estimate = col.estimate()
        sink.emit(Log(estimate.line()))
        if estimate_sink is not None:
            estimate_sink(estimate)
        runner = _runner(col, sink, cancel)
        sink.emit(Progress(done=0, total=estimate.requests, unit="request"))
        runner.run()
        status, message = _outcome(col, runner)
    except KeyboardInterrupt:
        status, message = "cancelled", "interrupted; re-run the same command to resume"
        raise
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        raise
    finally:
        col.release(status, message)
    summary = _summary(col, runner, status, message, time.monotonic() - start)
    if status == "failed":
        error = JobFailed(message)
        raise error.with_fix("edit_teacher", col.teacher.name) if runner.fatal else error
    if status == "cancelled":
        raise Cancelled(message)
    sink.emit(Finished(message, summary.to_dict()))
    return summary


def _runner(col: Collection, sink: Sink, cancel: CancelToken) -> Any:
    if col.teacher.kind == "local":
        from kdstudio.teachers.local import LocalRunner

        return LocalRunner(col, sink, cancel)
    from kdstudio.secrets import resolve_key

    key = resolve_key(col.teacher, col.ws.id)
    if col.config.batch_api:
        from kdstudio.teachers.batch import BatchRunner

        return BatchRunner(col, sink, cancel, key)
    active = col.ws.query_one(
        "SELECT batch_id FROM collection_batches WHERE collection_id=? AND status != 'processed'",
        (col.id,),
    )
    if active is not None:
        raise UserError(
            f"collection {col.name!r} has a Batch API job in progress ({active[0]}); re-run with "
            "--batch-api to pick up its results (sending the same requests live would pay twice)"
        )
    return LiveRunner(col, sink, cancel, key)


def _outcome(col: Collection, runner: Any) -> tuple[str, str]:
    counts = col.counts()
    if runner.fatal:
        return "failed", runner.fatal
    done = f"{counts['done']:,} of {counts['total']:,} done"
    failed = (
        f", {counts['failed']:,} failed (see `kdstudio outputs list {col.name} --status failed`)"
        if counts["failed"]
        else ""
    )
    if (
        runner.stop_reason
        and col.config.budget is not None
        and runner.stop_reason.startswith("budget")
    ):
        return "stopped", f"{runner.stop_reason} ({done}{failed})"
    if runner.stop_reason:
        return (
            "cancelled",
            f"{runner.stop_reason}: {done}{failed}; re-run the same command to resume",
        )
    if counts["queued"] or counts["failed"]:
        return (
            "incomplete",
            f"collection {col.name!r}: {done}{failed}; re-run the same command to retry",
        )
    return "done", f"collection {col.name!r}: {done}"


def _summary(
    col: Collection, runner: Any, status: str, message: str, elapsed: float
) -> CollectSummary:
    s = runner.stats
    counts = col.counts()
    cached = col.ws.query_one(
        "SELECT COUNT(*) FROM collection_items WHERE collection_id=? AND cached=1", (col.id,)
    )[0]
    return CollectSummary(
        collection=col.name,
        status=status,
        counts=counts,
        spent=col.spent(),
        requests=s.requests,
        retries=s.retries,
        cached=cached,
        elapsed=elapsed,
        message=message,
        extra={
            "rate": s.done / elapsed if elapsed > 0 else 0.0,
            "concurrency": getattr(getattr(runner, "limit", None), "limit", None),
        },
    )


def collection_for(ws: Workspace, config: CollectConfig) -> int:
    """The id of the collection `config` names (NotFound if it was never started)."""
    return collection_id(ws, config.collection_name())
