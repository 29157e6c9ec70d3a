"""The collection job: send every prompt of a dataset to a teacher and keep every answer.

    summary = collect(CollectConfig(teacher="gpt", dataset="prompts"), ws, sink, cancel)

What it guarantees:
- Every answer is committed as it arrives, keyed by a content hash of (endpoint, model,
  parameters, messages, sample). Re-running resumes; answers another collection already
  paid for are reused (`cached`), and duplicate prompts within a collection are sent once,
  so no request is paid twice. After a kill -9 the only requests repeated are those that
  were in flight.
- One process at a time collects a collection (the ledger's lease; see `ledger`).
- Transient errors retry with backoff and 429s lower the concurrency (`pacing`); 400/404
  fail the row with the server's message; 401/403 and an exhausted quota stop the job with
  one clear message.
- Before starting it reports what the remaining requests could cost (`cost`); `budget`
  stops launching when the next request could exceed it.
- Cancel (Ctrl-C, Stop) stops launching, lets in-flight requests finish and stores them.
- Its events are stored in the workspace (a `StoreSink` of its own, whichever front end
  runs it), and its Progress events carry plain numbers (`RunStats.progress`).

The runner does the sending: `live` for an OpenAI-compatible endpoint, `batch` through the
Batch API (half price), `local` for a local teacher (transformers in this process).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kdstudio.collect.config import CollectConfig
from kdstudio.collect.cost import CostEstimate
from kdstudio.collect.ledger import Collection
from kdstudio.collect.runner import Runner, RunStats
from kdstudio.errors import Cancelled, JobFailed, UserError, disk_full
from kdstudio.events import (
    CancelToken,
    FanoutSink,
    Finished,
    Log,
    NullSink,
    Progress,
    Sink,
    StoreSink,
)
from kdstudio.formatting import usd
from kdstudio.workspace import Workspace


@dataclass
class CollectSummary:
    """How a collection run ended (`collect --json` prints it)."""

    collection: str
    status: (
        str  # done | incomplete | stopped (budget) | cancelled | failed (also: every row failed)
    )
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


def collect(
    config: CollectConfig,
    ws: Workspace,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
    *,
    ledger: Collection | None = None,
) -> CollectSummary:
    """Run (or resume) a collection. Raises Cancelled (after storing every answer that came
    back) when cancelled, JobFailed when the teacher refuses the key, UserError on bad input.
    `ledger` runs another kind of collection through this same job (a judge's requests:
    `kdstudio.curate.judge.JudgeLedger`)."""
    cancel = cancel or CancelToken()
    col = ledger or Collection(config, ws)
    # The key first: a keyring that fails leaves no collection behind and prints no estimate.
    key = _key(col)
    col.open()
    col.claim()
    col.save_settings()  # so a later resume starts from them
    sink = FanoutSink([sink or NullSink(), StoreSink(ws, "collect", col.name)])
    start = time.monotonic()
    status, message = "failed", "stopped by an error"
    try:
        estimate = col.estimate()
        runner = _runner(col, sink, cancel, _stats(estimate), key)
        sink.emit(Log(estimate.line()))
        sink.emit(Progress(done=0, total=estimate.requests, unit="request"))
        with col.lease.beating():  # a long request, batch poll or generate must not look dead
            runner.run()
        status, message = _outcome(col, runner)
    except KeyboardInterrupt:
        status, message = "cancelled", "interrupted; re-run the same command to resume"
        raise
    except Exception as exc:
        full = disk_full(exc)
        message = str(full or exc) or type(exc).__name__
        if full is not None:
            raise full from None
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


def estimate_cost(config: CollectConfig, ws: Workspace) -> CostEstimate:
    """The cost of what is left to collect; writes nothing and sends nothing (the window
    shows it before the Start button, `collect --estimate` prints it)."""
    col = Collection(config, ws)
    return col.estimate(col.uncached_prompt_tokens())


def _stats(estimate: CostEstimate) -> RunStats:
    priced = estimate.priced and not estimate.local
    return RunStats(estimate.requests, estimate.spent, estimate.usd if priced else None)


def _key(col: Collection) -> str | None:
    """The teacher's API key (None for a local teacher, or one that needs none); the values
    of its secret headers go to the collection's requests."""
    if col.teacher.kind == "local":
        return None
    from kdstudio.secrets import resolve_headers, resolve_key

    key = resolve_key(col.teacher, col.ws.id)
    col.unlock(resolve_headers(col.teacher, col.ws.id))
    return key


def _runner(
    col: Collection, sink: Sink, cancel: CancelToken, stats: RunStats, key: str | None
) -> Runner:
    if col.teacher.kind == "local":
        from kdstudio.collect.local import LocalRunner

        return LocalRunner(col, sink, cancel, stats)
    if col.config.batch_api:
        from kdstudio.collect.batch import BatchRunner

        return BatchRunner(col, sink, cancel, stats, key)
    active = col.ws.query_one(
        "SELECT batch_id FROM collection_batches WHERE collection_id=? AND status != 'processed'",
        (col.id,),
    )
    if active is not None:
        raise UserError(
            f"collection {col.name!r} has a Batch API job in progress ({active[0]}); re-run with "
            "--batch-api to pick up its results (sending the same requests live would pay twice)"
        )
    from kdstudio.collect.live import LiveRunner

    return LiveRunner(col, sink, cancel, stats, key)


def _outcome(col: Collection, runner: Runner) -> tuple[str, str]:
    counts = col.counts()
    if runner.fatal:
        return "failed", runner.fatal
    done = f"{counts['done']:,} of {counts['total']:,} done"
    failed = (
        f", {counts['failed']:,} failed (see `kdstudio outputs list {col.name} --status failed`)"
        if counts["failed"]
        else ""
    )
    if runner.budget_reached:
        # said once, here, with what was spent in the end (answers in flight included)
        spent = f"{usd(col.spent())} spent of {usd(col.config.budget or 0.0)}"
        return "stopped", f"budget reached: {spent}; {runner.stop_reason} ({done}{failed})"
    if runner.stop_reason:
        return (
            "cancelled",
            f"{runner.stop_reason}: {done}{failed}; re-run the same command to resume",
        )
    if counts["failed"] and not counts["done"]:
        return (
            "failed",
            f"collection {col.name!r}: none of {counts['total']:,} done, {counts['failed']:,} "
            f"failed: {col.top_failure()}; check the teacher with "
            f"`kdstudio teacher probe {col.teacher.name}`, then re-run the same command",
        )
    if counts["queued"] or counts["failed"]:
        return (
            "incomplete",
            f"collection {col.name!r}: {done}{failed}; re-run the same command to retry",
        )
    return "done", f"collection {col.name!r}: {done}"


def _summary(
    col: Collection, runner: Runner, status: str, message: str, elapsed: float
) -> CollectSummary:
    s = runner.stats
    return CollectSummary(
        collection=col.name,
        status=status,
        counts=col.counts(),
        spent=col.spent(),
        requests=s.requests,
        retries=s.retries,
        cached=col.cached_count(),
        elapsed=elapsed,
        message=message,
        extra={"rate": s.done / elapsed if elapsed > 0 else 0.0, "concurrency": s.concurrency},
    )
