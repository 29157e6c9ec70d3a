"""What every runner shares: the `Request` it sends, the `RunStats` it keeps, and the
`Runner` protocol the job drives.

A runner sends a collection's queued requests to its teacher and stores each answer as it
arrives (through `kdstudio.collect.ledger.Collection`): `live` (asyncio + the openai
client), `batch` (the OpenAI Batch API) and `local` (a transformers model in this process).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from kdstudio.events import Progress


@dataclass(eq=False)
class Request:
    """One (dataset row, sample) to ask the teacher for, as queued in the ledger."""

    row_id: int
    sample: int
    hash: str  # the response cache key: content hash of (endpoint, body, sample)
    body: dict[str, Any]  # the request exactly as sent and hashed
    prompt_tokens: int  # approximate (see kdstudio.collect.cost.approx_prompt_tokens)
    idx: int = 0  # the row's index in its dataset (what users see as `#`)
    attempts: int = 0
    ready_at: float = 0.0  # monotonic time before which a retry waits
    reserved: float = 0.0  # worst-case USD held against the budget while in flight
    rate_limited: int = 0  # 429s: the server's "later", not the row's fault

    @property
    def ids(self) -> dict[str, int]:
        """What a RowDone event carries to name this request."""
        return {"row_id": self.row_id, "sample": self.sample}


class RunStats:
    """A runner's running figures, reported in its Progress events and the job's summary."""

    def __init__(self, total: int = 0, spent: float = 0.0, estimate: float | None = None) -> None:
        self.total = total  # requests queued at the start
        self.spent = spent  # USD spent in this collection so far
        self.estimate = estimate  # USD the queued requests could cost (None: unpriced)
        self.done = self.failed = self.retries = self.requests = 0
        self.concurrency: int | None = None  # requests in flight at most (live runner)
        self.start = time.monotonic()
        self.last_emit = 0.0

    def progress(self, message: str = "") -> Progress:
        """A Progress event of plain numbers (front ends format money, rates and times)."""
        extra: dict[str, Any] = {"retries": self.retries, "failed": self.failed}
        if self.spent or self.estimate is not None:  # not for a free (local) teacher
            extra["spent_usd"] = self.spent
        if self.estimate is not None:
            extra["estimate_usd"] = self.estimate
        if self.concurrency is not None:
            extra["concurrency"] = self.concurrency
        return Progress(
            done=self.done + self.failed,
            total=self.total,
            unit="request",
            message=message,
            extra=extra,
        )


class Runner(Protocol):
    """Runs the queued requests of one collection; the job reads how it ended from it.

    `run()` returns when nothing is left, when stopped (cancel, budget: `stop_reason` says
    why, `budget_reached` whether it was the budget), or when the teacher refused the job as
    a whole (`fatal`: a rejected key, no quota, an unknown model).
    """

    stats: RunStats
    stop_reason: str | None
    budget_reached: bool
    fatal: str | None

    def run(self) -> None: ...
