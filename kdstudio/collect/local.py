"""The local runner: a collection's requests answered by a local Hugging Face teacher
(`kdstudio.teachers.local.LocalTeacher`) in this process, `local_batch_size` prompts per
`generate()` call. Each batch is committed in one transaction, and cancel is checked
between batches (a batch in progress finishes and is stored)."""

from __future__ import annotations

from typing import Any

from kdstudio.collect.ledger import Collection
from kdstudio.collect.runner import Request, RunStats
from kdstudio.events import CancelToken, RowDone, Sink


class LocalRunner:
    """Runs the queued requests of a collection through a LocalTeacher, batch by batch."""

    def __init__(self, col: Collection, sink: Sink, cancel: CancelToken, stats: RunStats) -> None:
        self.col, self.sink, self.cancel, self.stats = col, sink, cancel, stats
        self.fatal: str | None = None  # a local teacher never refuses the job as a whole
        self.stop_reason: str | None = None
        self.budget_reached = False  # and it costs nothing

    def run(self) -> None:
        from kdstudio.teachers.local import LocalTeacher

        teacher = LocalTeacher(self.col.teacher.path or "", name=self.col.teacher.name)
        size = self.col.config.local_batch_size
        batch: list[Request] = []
        for request in self.col.iter_queued():
            batch.append(request)
            if len(batch) == size:
                if not self._run_batch(teacher, batch):
                    return
                batch = []
        if batch:
            self._run_batch(teacher, batch)

    def _run_batch(self, teacher: Any, batch: list[Request]) -> bool:
        if self.cancel.cancelled:
            self.stop_reason = self.cancel.reason or "cancelled"
            return False
        with self.col.ws.tx() as con:
            self.col.mark(con, batch, "in_flight", bump=True)
        self.stats.requests += len(batch)
        responses = teacher.generate([self._body(r) for r in batch])
        events = []
        with self.col.ws.tx() as con:
            for request, resp in zip(batch, responses, strict=True):
                self.col.store(con, request, resp)
                self.stats.done += 1
                extra = {**request.ids, "tokens": resp.completion_tokens}
                events.append(RowDone(row=request.idx, status="done", extra=extra))
        for e in events:
            self.sink.emit(e)
        self.sink.emit(self.stats.progress())
        return True

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        """Sample i of a seeded request uses seed + i (the same rule as a live teacher's)."""
        body = dict(request.body)
        if body.get("seed") is not None:
            body["seed"] = int(body["seed"]) + request.sample
        return body
