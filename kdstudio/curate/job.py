"""What every automatic curator shares: the answers it decides, its record and claim in the
workspace, and how a run of it ended.

A curator run (`Curation`) is one row of `curations` per (collection, curator): the settings
it last ran with, its status and counts, and a `Lease` so that one curator never runs twice
at once on one collection (the window and the CLI, two terminals). Decisions are committed as
they are made (`record`), so a stop or a crash keeps every decision made so far and a re-run
continues: answers whose decision basis (curator settings + the answer's text) is already in
the history are skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kdstudio.collect import decisions
from kdstudio.collect.store import content_hash, get_collection, prompt_messages
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import FanoutSink, NullSink, Progress, Sink, StoreSink
from kdstudio.workspace import Lease, LeaseHeld, Workspace

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
PAGE = 500


@dataclass
class Answer:
    """One finished answer to decide: its prompt, its text (the edit when there is one), the
    dataset's reference answer, and the teacher's mean token logprob."""

    row_id: int
    sample: int
    idx: int
    prompt: str  # the final user turn
    messages: list[dict]
    text: str
    reference: str | None
    mean_logprob: float | None
    review: str = "pending"  # the decision in force
    decider: str | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.row_id, self.sample)

    @property
    def person_rejected(self) -> bool:
        return self.review == "rejected" and self.decider == decisions.PERSON


def iter_answers(ws: Workspace, collection_id: int) -> Iterator[Answer]:
    """The done items of a collection in dataset order, read in pages (memory stays flat).
    Unlike `store.iter_examples` (training's reader) it carries the dataset's reference and
    the confidence, and decodes no logprobs."""
    last = (-1, -1)
    while True:
        rows = ws.query(
            "SELECT ci.row_id, ci.sample, d.idx, d.prompt, d.messages, d.system, d.reference,"
            " COALESCE(ci.edited_text, r.text) AS text, r.mean_logprob, ci.review, ci.decider"
            " FROM collection_items ci"
            " JOIN dataset_rows d ON d.id = ci.row_id JOIN responses r ON r.hash = ci.hash"
            " WHERE ci.collection_id=? AND ci.status='done' AND (ci.row_id, ci.sample) > (?, ?)"
            " ORDER BY ci.row_id, ci.sample LIMIT ?",
            (collection_id, last[0], last[1], PAGE),
        )
        for r in rows:
            yield Answer(
                r["row_id"],
                r["sample"],
                r["idx"],
                r["prompt"],
                prompt_messages(r["messages"], r["prompt"], r["system"]),
                r["text"] or "",
                r["reference"],
                r["mean_logprob"],
                r["review"],
                r["decider"],
            )
        if len(rows) < PAGE:
            return
        last = (rows[-1]["row_id"], rows[-1]["sample"])


def count_answers(ws: Workspace, collection_id: int) -> int:
    return int(
        ws.query_one(
            "SELECT COUNT(*) FROM collection_items WHERE collection_id=? AND status='done'",
            (collection_id,),
        )[0]
    )


def basis(curator: Any, key: tuple[int, int], text: str) -> str:
    """What a decision is based on: the curator's settings (and code), which answer (two
    answers with the same text are two decisions) and the answer's text."""
    return content_hash(["curate", curator, list(key), text])[:32]


@dataclass
class CurationSummary:
    """How a curator run ended (`outputs check|judge|best --json` prints it)."""

    collection: str
    kind: str  # check | judge | best
    decider: str
    status: str  # done | cancelled | stopped (budget) | failed
    counts: dict[str, int]
    message: str
    elapsed: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Outcome:
    """How a curator's run ends; the body of `Curation.running` sets it."""

    status: str = "failed"  # done | cancelled | stopped | failed
    message: str = "stopped by an error"


class Curation:
    """One curator's run on one collection: its row in `curations`, its claim, its counts,
    and the decisions it commits."""

    def __init__(
        self, ws: Workspace, collection: str, kind: str, decider: str, settings: dict[str, Any]
    ) -> None:
        self.ws, self.kind, self.decider, self.settings = ws, kind, decider, settings
        self.info = get_collection(ws, collection)  # NotFound names the known collections
        if self.info.source == "judge" and kind != "judge":
            raise UserError(
                f"collection {collection!r} holds a judge's verdicts, not answers to curate; "
                f"curate the judged collection"
            )
        self.collection, self.collection_id = self.info.name, self.info.id
        self.id: int | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            ("accepted", "rejected", "pending", "kept", "skipped", "errors"), 0
        )
        self.start = time.monotonic()
        self._reported: tuple | None = None

    @property
    def lease(self) -> Lease:
        if self.id is None:
            raise RuntimeError("claim() the curation first")
        return Lease(
            self.ws, "curations", self.id, every_s=HEARTBEAT_S, stale_after_s=STALE_AFTER_S
        )

    def sink(self, sink: Sink | None) -> Sink:
        """The front end's sink plus the workspace's record of this curator's events."""
        return FanoutSink(
            [sink or NullSink(), StoreSink(self.ws, "curate", f"{self.collection}:{self.decider}")]
        )

    def claim(self) -> None:
        """Mark this process as running the curator; refuse while another live one does."""
        now = time.time()
        try:
            with self.ws.tx() as con:
                con.execute(
                    "INSERT OR IGNORE INTO curations(collection_id, kind, decider, created_at,"
                    " updated_at) VALUES (?,?,?,?,?)",
                    (self.collection_id, self.kind, self.decider, now, now),
                )
                self.id = int(
                    con.execute(
                        "SELECT id FROM curations WHERE collection_id=? AND decider=?",
                        (self.collection_id, self.decider),
                    ).fetchone()[0]
                )
                self.lease.claim(
                    con,
                    status="running",
                    message=None,
                    config=json.dumps(self.settings, sort_keys=True),
                    updated_at=now,
                )
        except LeaseHeld as held:
            raise UserError(
                f"{self.decider} is already running on collection {self.collection!r} (process "
                f"{held.pid} on {held.host}); wait for it or stop it first"
            ) from None

    @contextmanager
    def running(self, again: str) -> Iterator[Outcome]:
        """Claim the curator for the body, then release it with how it ended (the body sets
        the Outcome). A run that ends `cancelled` raises Cancelled once released, saying
        `again` (how to continue); an error or Ctrl-C is recorded and goes on up."""
        self.claim()
        outcome = Outcome()
        try:
            yield outcome
        except KeyboardInterrupt:
            outcome.status, outcome.message = "cancelled", f"interrupted; {again}"
            raise
        except Exception as exc:
            outcome.status, outcome.message = "failed", str(exc) or type(exc).__name__
            raise
        finally:
            self.release(outcome.status, outcome.message)
        if outcome.status == "cancelled":
            raise Cancelled(f"{outcome.message}; {again}")

    def decided(self, bases: Iterable[str]) -> set[str]:
        """Which of these bases this collection's history has decided already."""
        return decisions.decided_bases(self.ws.db, self.collection_id, bases)

    def record(self, batch: list[decisions.Decision]) -> None:
        """Commit decisions (one transaction) and count them."""
        if not batch:
            return
        with self.ws.tx() as con:
            got = decisions.record(con, self.collection_id, batch, curation_id=self.id)
        self.counts["kept"] += got["kept"]
        for d in batch:
            self.counts[d.review] += 1

    def report(self, sink: Sink, done: int, total: int) -> None:
        """A Progress event with the counts so far (not twice for the same figures)."""
        extra = {k: v for k, v in self.counts.items() if v}
        figures = (done, total, tuple(sorted(extra.items())))
        if figures != self._reported:
            self._reported = figures
            sink.emit(Progress(done=done, total=total, unit="answer", extra=extra))

    def release(self, status: str, message: str) -> None:
        self.lease.release(
            status=status,
            message=message,
            counts=json.dumps(self.counts),
            updated_at=time.time(),
        )

    def summary(self, status: str, message: str, **extra: Any) -> CurationSummary:
        return CurationSummary(
            collection=self.collection,
            kind=self.kind,
            decider=self.decider,
            status=status,
            counts=dict(self.counts),
            message=message,
            elapsed=time.monotonic() - self.start,
            extra=extra,
        )

    def describe(self) -> str:
        """One line: what this run decided."""
        c = self.counts
        parts = [f"{c['accepted']:,} accepted", f"{c['rejected']:,} rejected"]
        if c["pending"]:
            parts.append(f"{c['pending']:,} left pending")
        line = f"{self.collection!r} decided by {self.decider}: " + ", ".join(parts)
        if c["errors"]:
            line += f" ({c['errors']:,} could not be decided: see their reasons)"
        if c["kept"]:
            line += f"; a person's decision stood on {c['kept']:,}"
        if c["skipped"]:
            line += f"; {c['skipped']:,} already decided with the same settings"
        return line


def curations(ws: Workspace, collection: str) -> list[dict[str, Any]]:
    """Every automatic curator that ran on a collection, with how its last run ended."""
    info = get_collection(ws, collection)
    rows = ws.query(
        "SELECT kind, decider, status, counts, message, pid, host, heartbeat, updated_at"
        " FROM curations WHERE collection_id=? ORDER BY updated_at",
        (info.id,),
    )
    out = []
    for r in rows:
        status = r["status"]
        if status == "running" and not Lease.holder_alive(
            r["pid"], r["host"], r["heartbeat"], STALE_AFTER_S
        ):
            status = "interrupted"
        out.append(
            {
                "kind": r["kind"],
                "decider": r["decider"],
                "status": status,
                "counts": json.loads(r["counts"] or "{}"),
                "message": r["message"],
                "updated_at": r["updated_at"],
            }
        )
    return out
