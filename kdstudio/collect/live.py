"""The live runner: a collection's requests against an OpenAI-compatible teacher, many in
flight at once (asyncio + the official openai client, its own retries off).

One loop launches requests up to the adaptive concurrency limit (`pacing`), stores each
answer in the ledger as it arrives (one transaction per wake-up), retries transient errors
after their backoff, and stops launching on cancel, on the budget, or on a fatal answer
(a rejected key, no quota). Identical requests (duplicate prompts) are sent once: the
others follow their leader's outcome. A request is claimed before it goes (`ledger`): one
that another collection has in flight waits for that answer, one answered meanwhile comes
from the cache. When it stops, the requests not answered go back to the queue, so a
resumed collection asks for them again and nothing is paid twice.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import threading
import time
from collections import deque
from typing import Any

from kdstudio.collect.ledger import AWAIT_CHECK_S, Collection, awaited_note
from kdstudio.collect.pacing import MAX_RATE_LIMITED, AdaptiveLimit, backoff
from kdstudio.collect.runner import Request, RunStats
from kdstudio.events import CancelToken, Log, RowDone, Sink
from kdstudio.formatting import usd


class LiveRunner:
    """Runs the queued items of a collection against an OpenAI-compatible teacher."""

    def __init__(
        self, col: Collection, sink: Sink, cancel: CancelToken, stats: RunStats, key: str | None
    ) -> None:
        self.col, self.sink, self.cancel, self.stats, self.key = col, sink, cancel, stats, key
        self.hidden = [key, *col.secrets]  # what no message may repeat
        self.cfg = col.config
        self.limit = AdaptiveLimit(self.cfg.concurrency, adaptive=self.cfg.adaptive)
        self.rng = random.Random()
        self.retry: list[Request] = []
        self.pause_until = 0.0
        self.reserved = 0.0
        self.prompt_ratio = 1.5  # safety margin on approximate prompt tokens, learnt as we go
        self.stop_reason: str | None = None
        self.budget_reached = False
        self.fatal: str | None = None
        # Identical requests (duplicate prompts) are sent once: the others follow the leader.
        self.leader_of: dict[str, Request] = {}
        self.followers: dict[str, list[Request]] = {}
        # Leaders whose request another collector has in flight: they wait for its answer.
        self.awaiting: dict[str, Request] = {}

    def run(self) -> None:
        """Run the requests on an asyncio loop in a thread of its own. A second Ctrl-C then
        raises KeyboardInterrupt here, in this thread's wait, never inside asyncio's own
        machinery (where it left tasks pending and printed a traceback per request in
        flight): the loop is cancelled, closes cleanly, and the interrupt goes on."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                asyncio.run(self._main(box))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                box["error"] = exc
            finally:
                self.col.ws.release_thread()

        thread = threading.Thread(target=target, name=f"collect-{self.col.name}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.25)
        except KeyboardInterrupt:
            loop, task = box.get("loop"), box.get("task")
            if loop is not None and task is not None:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass  # the loop has just closed by itself
            thread.join(10.0)  # bounded: the interrupt is what the person asked for
            raise
        if "error" in box:
            raise box["error"]

    async def _main(self, box: dict[str, Any]) -> None:
        from kdstudio.teachers.openai_api import make_client

        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()

        client = make_client(
            self.col.teacher,
            self.key,
            max_connections=self.cfg.concurrency,
            timeout=self.cfg.timeout,
            headers=self.col.headers,
        )
        tasks: set[asyncio.Task] = set()
        try:
            await self._loop(client, tasks)
        finally:
            # Leaving early (a failed write, a second Ctrl-C): the requests still in flight
            # are cancelled here and awaited, so none is left for asyncio to report. Their
            # items stay in flight in the ledger and go back to the queue on the next run.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    async def _loop(self, client: Any, tasks: set[asyncio.Task]) -> None:
        queue = self.col.iter_queued()
        pending: deque[Request] = deque()
        exhausted = False
        in_flight = 0
        finished: list[tuple[Request, Any]] = []
        loop = asyncio.get_running_loop()
        wake: list[asyncio.Future] = []
        last_check = 0.0

        def wake_up() -> None:
            if wake and not wake[0].done():
                wake[0].set_result(None)

        def on_done(item: Request, task: asyncio.Task) -> None:
            tasks.discard(task)
            if task.cancelled():  # only when the loop is being left: nothing to store
                return
            finished.append((item, task.result()))
            wake_up()

        while True:
            now = time.monotonic()
            if self.cancel.cancelled and not self.stop_reason:
                self.stop_reason = self.cancel.reason or "cancelled"
            if finished:
                done, finished[:] = list(finished), []
                in_flight -= len(done)
                self._handle(done)
                if not in_flight:
                    self.reserved = 0.0  # no rounding left over from the additions
            if not pending and not exhausted:
                pending.extend(next(queue, None) for _ in range(256))
                while pending and pending[-1] is None:
                    pending.pop()
                    exhausted = True
            if self.awaiting and now - last_check >= AWAIT_CHECK_S:
                last_check = now
                self._check_awaiting(pending)
            launch = self._launchable(pending, in_flight, now)
            if launch:
                launch = self._claim(launch)
                for item in launch:
                    item.attempts += 1
                    self.stats.requests += 1
                    in_flight += 1
                    task = loop.create_task(self._attempt(client, item))
                    tasks.add(task)
                    task.add_done_callback(functools.partial(on_done, item))
            nothing_left = not pending and exhausted and not self.retry and not self.awaiting
            if not in_flight and (self.stop_reason or self.fatal or nothing_left):
                break
            self._progress()
            if not finished:  # sleep until a request ends, a retry is due, or 0.1 s (cancel)
                wake[:] = [loop.create_future()]
                timer = loop.call_later(self._idle_wait(now), wake_up)
                await wake[0]
                timer.cancel()
        self._progress(force=True)
        self._requeue(list(pending) + self.retry + list(self.awaiting.values()))

    def _claim(self, launch: list[Request]) -> list[Request]:
        """Claim the requests about to go (across collections): those another collector has
        in flight wait for its answer, those answered meanwhile come from the cache; the
        rest are marked in flight and returned, to send."""
        events: list[RowDone] = []
        with self.col.ws.tx() as con:
            send, held, answered = self.col.claim_requests(con, launch)
            self.col.mark(con, send, "in_flight", bump=True)
            for item in answered:
                events += self._from_cache(con, item)
        for item in held + answered:
            self.reserved -= item.reserved  # this collection does not pay for them
            item.reserved = 0.0
        if held and not self.awaiting:  # said when waiting starts, not for every launch
            self.sink.emit(Log(awaited_note(held)))
        for item in held:
            self.awaiting[item.hash] = item
        for event in events:
            self.sink.emit(event)
        return send

    def _check_awaiting(self, pending: deque[Request]) -> None:
        """Requests another collector had in flight: take the answered ones from the cache;
        ask for the others once no live collector holds them (it failed, stopped or died)."""
        answered, free = self.col.awaited(list(self.awaiting))
        events: list[RowDone] = []
        if answered:
            with self.col.ws.tx() as con:
                for h in answered:
                    events += self._from_cache(con, self.awaiting.pop(h))
        for h in free:
            pending.appendleft(self.awaiting.pop(h))
        for event in events:
            self.sink.emit(event)

    def _from_cache(self, con: Any, item: Request) -> list[RowDone]:
        """`item` (and its duplicates) answered by another collection: done, at no cost."""
        event = self.col.done_from_cache(con, item)
        self.stats.done += 1
        return [event, *self._settle_followers(con, item, event)]

    def _idle_wait(self, now: float) -> float:
        waits = [0.1]
        if self.pause_until > now:
            waits.append(self.pause_until - now)
        if self.retry:
            waits.append(max(0.001, min(it.ready_at for it in self.retry) - now))
        return max(0.001, min(waits))

    def _launchable(self, pending: deque[Request], in_flight: int, now: float) -> list[Request]:
        if self.stop_reason or self.fatal or now < self.pause_until:
            return []
        out: list[Request] = []
        room = self.limit.limit - in_flight
        while room > 0:
            item = self._next_ready(pending, now)
            if item is None:
                break
            leader = self.leader_of.get(item.hash)
            if leader is not None and leader is not item:
                self.followers[item.hash].append(item)
                continue
            if not self._affordable(item, holding=in_flight + len(out)):
                self._put_back(item, pending)
                break
            out.append(item)
            self.leader_of[item.hash] = item
            self.followers.setdefault(item.hash, [])
            room -= 1
        return out

    def _next_ready(self, pending: deque[Request], now: float) -> Request | None:
        if self.retry:
            ready = min(self.retry, key=lambda it: it.ready_at)
            if ready.ready_at <= now:
                self.retry.remove(ready)
                return ready
        return pending.popleft() if pending else None

    def _put_back(self, item: Request, pending: deque[Request]) -> None:
        if item.attempts:
            self.retry.append(item)
        else:
            pending.appendleft(item)

    def _affordable(self, item: Request, *, holding: int) -> bool:
        """Whether `item` may go now: its worst case fits beside what is spent and what the
        `holding` requests in flight (or about to go) hold. When it does not fit only
        because of them, it waits for their answers (which release what they hold); when
        none holds anything, the budget is reached."""
        budget = self.cfg.budget
        if budget is None:
            return True
        worst = self.col.worst_cost(item, self.prompt_ratio)
        if self.stats.spent + self.reserved + worst <= budget:
            self.reserved += worst
            item.reserved = worst
            return True
        if not holding:  # a count: the float sum of reservations may not come back to 0
            self.budget_reached = True
            self.stop_reason = (
                f"the next request could cost up to {usd(worst)}; re-run with a larger "
                "--budget to continue"
            )
        return False

    async def _attempt(self, client: Any, item: Request) -> Any:
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
            return classify(exc, self.hidden)

    def _handle(self, results: list[tuple[Request, Any]]) -> None:
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

    def _settle_followers(self, con: Any, leader: Request, event: RowDone | None) -> list[RowDone]:
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
            RowDone(row=f.idx, status=event.status, detail=event.detail, extra=f.ids)
            for f in followers
        ]

    def _apply(
        self, con: Any, item: Request, outcome: Any, now: float
    ) -> tuple[RowDone | None, bool]:
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
            extra = {**item.ids, "cost": resp.cost, "tokens": resp.completion_tokens}
            return RowDone(row=item.idx, status="done", extra=extra), True
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
        return RowDone(row=item.idx, status="failed", detail=reason, extra=item.ids), True

    def _requeue(self, items: list[Request]) -> None:
        with self.col.ws.tx() as con:
            self.col.mark(con, [it for it in items if it is not None], "queued")

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.stats.last_emit < 0.25:
            return
        self.stats.last_emit = now
        self.stats.concurrency = self.limit.limit
        self.sink.emit(self.stats.progress())
