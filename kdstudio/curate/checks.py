"""Checks: a program decides each answer (`kdstudio outputs check COLLECTION --check SPEC`).

    summary = run_check(CheckConfig(collection="prompts.gpt", check_spec="checks.py:valid"), ws)

A check is your function `(prompt, answer, reference) -> bool | float` (0..1, or a tuple
`(that, reason)`), named `FILE.py:NAME` or `module:NAME`, or a built-in:

- `exact`: the answer equals the dataset's reference answer (surrounding and repeated
  whitespace aside);
- `numeric[:TOLERANCE]`: the last number in the answer equals the last number in the
  reference (relative tolerance, default 1e-6);
- `regex:PATTERN`: the pattern is found in the answer (anchor it with ^ and $ for a whole
  match);
- `json-schema:FILE.json`: the answer (or the ```json block in it) is JSON that matches the
  schema.

It runs in `workers` processes (`kdstudio.curate.worker`), one answer at a time each, so a
check that raises, returns garbage (a string, NaN, 7), hangs past `timeout` or crashes its
process costs only that answer, which gets the reason and stays pending (or is rejected with
`on_error = "reject"`); the process is replaced and checking goes on. A check that cannot be
loaded at all (no such file, a syntax error) is bad input: nothing is decided and the
message names the file and line.

Decisions are committed as they come (see `kdstudio.curate.job`): Stop (Ctrl-C) waits for
the answers being checked, keeps every decision, and a re-run of the same check skips
answers it already decided unless the check's file, its settings or the answer changed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from kdstudio.collect.decisions import Decision
from kdstudio.curate.config import CheckConfig
from kdstudio.curate.job import (
    Answer,
    Curation,
    CurationSummary,
    basis,
    count_answers,
    iter_answers,
)
from kdstudio.errors import UserError
from kdstudio.events import CancelToken, Log, Sink

LOAD_TIMEOUT_S = 60.0  # for importing a check (a slow import is not a hang of one answer)
FLUSH_EVERY_S = 0.5  # decisions are committed at least this often
FLUSH_EVERY = 200  # ... or every this many


# -- what a check is ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSpec:
    """A parsed `--check`: what to run and under which name it decides."""

    kind: str  # file | module | exact | numeric | regex | json-schema
    name: str  # as shown: checks.py:is_valid, exact, regex:^\d+$
    target: str | None = None  # the file, the module, the pattern or the schema file
    func: str | None = None
    arg: Any = None  # numeric: the tolerance; json-schema: the schema
    digest: str = ""  # the code's or the schema's content: a changed check decides again

    @property
    def decider(self) -> str:
        return f"check:{self.name}"

    def to_worker(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "target": self.target,
            "func": self.func,
            "arg": self.arg,
        }


def parse_check(text: str, base: Path | None = None) -> CheckSpec:
    """A `--check` value as a CheckSpec; UserError says what is wrong and the forms allowed."""
    text = (text or "").strip()
    head, _, rest = text.partition(":")
    if head == "exact" and not rest:
        return CheckSpec("exact", "exact")
    if head == "numeric":
        try:
            tol = float(rest) if rest else 1e-6
        except ValueError:
            raise UserError(f"--check {text}: the tolerance {rest!r} is not a number") from None
        if not tol >= 0:
            raise UserError(f"--check {text}: the tolerance must be 0 or more")
        return CheckSpec("numeric", text, arg=tol)
    if head == "regex":
        try:
            re.compile(rest)
        except re.error as exc:
            raise UserError(f"--check {text}: not a valid regular expression ({exc})") from None
        return CheckSpec("regex", text, target=rest)
    if head == "json-schema":
        return _json_schema_spec(text, rest, base)
    if rest and re.fullmatch(r"[A-Za-z_]\w*", rest):
        if head.endswith(".py"):
            path = (base or Path.cwd()) / Path(head).expanduser()
            if not path.is_file():
                raise UserError(f"--check {text}: there is no file {path}")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            return CheckSpec("file", f"{path.name}:{rest}", str(path.resolve()), rest, None, digest)
        if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", head):
            return CheckSpec("module", text, head, rest, None, _module_digest(head))
    raise UserError(
        f"--check {text!r} is not a check: give FILE.py:FUNCTION or module:FUNCTION (your "
        "function (prompt, answer, reference) -> bool or a 0..1 float), or a built-in: exact, "
        "numeric[:TOLERANCE], regex:PATTERN, json-schema:FILE.json"
    )


def _json_schema_spec(text: str, rest: str, base: Path | None) -> CheckSpec:
    path = (base or Path.cwd()) / Path(rest).expanduser()
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--check {text}: cannot read the schema {path} ({exc.strerror})") from None
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--check {text}: {path.name}, line {exc.lineno}, column {exc.colno}: not JSON "
            f"({exc.msg})"
        ) from None
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UserError(
            f"--check {text}: {path.name} is not a valid JSON Schema ({exc.message})"
        ) from None
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return CheckSpec(
        "json-schema", f"json-schema:{path.name}", str(path), arg=schema, digest=digest
    )


def _module_digest(module: str) -> str:
    """The module's file content, when it can be found without importing it."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    origin = getattr(found, "origin", None)
    if origin and os.path.isfile(origin):
        return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]
    return ""


# -- the worker processes -------------------------------------------------------------------------

Task = tuple[Any, str, str, Any]  # (key, prompt, answer, reference)
Result = tuple[str, float | None, str | None]  # ("ok" | "error", score, reason)


class _Worker:
    def __init__(self, ctx: Any, spec: dict[str, Any]) -> None:
        from kdstudio.curate import worker

        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker.main, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        self.task: Task | None = None
        self.deadline = 0.0

    def stop(self, *, kill: bool = False) -> None:
        if self.proc.is_alive():
            if kill:
                self.proc.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    pass
        self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2.0)
        self.conn.close()

    def exit_reason(self) -> str:
        self.proc.join(1.0)
        code = self.proc.exitcode
        if code is not None and code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the check's process died ({name})"
        return f"the check's process died (exit code {code})"


class CheckPool:
    """`workers` processes, each running the check on one answer at a time, with a
    per-answer timeout. Use as a context manager; `run` feeds it tasks."""

    def __init__(self, spec: CheckSpec, workers: int, timeout: float) -> None:
        self.spec, self.timeout = spec.to_worker(), timeout
        self.n = max(1, min(workers, os.cpu_count() or 1))
        self.ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        self.workers: list[_Worker] = []
        self.replaced = 0

    def __enter__(self) -> CheckPool:
        try:
            starting = [_Worker(self.ctx, self.spec) for _ in range(self.n)]
            self.workers = starting
            for w in starting:
                self._ready(w)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            w.stop(kill=w.task is not None)
        self.workers = []

    def _ready(self, w: _Worker) -> None:
        """Wait for a worker to load the check; a check that cannot load is bad input."""
        if not w.conn.poll(LOAD_TIMEOUT_S):
            w.stop(kill=True)
            raise UserError(
                f"--check {self.spec['name']}: loading it took more than {LOAD_TIMEOUT_S:.0f} s"
            )
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            raise UserError(
                f"--check {self.spec['name']}: loading it killed its process "
                f"({w.exit_reason().removeprefix('the check')})"
            ) from None
        if message[0] == "load_error":
            raise UserError(f"--check {self.spec['name']}: {message[1]}")

    def _replace(self, w: _Worker) -> _Worker:
        w.stop(kill=True)
        fresh = _Worker(self.ctx, self.spec)
        self.workers[self.workers.index(w)] = fresh
        self._ready(fresh)
        self.replaced += 1
        return fresh

    def run(
        self,
        tasks: Iterator[Task],
        on_result: Callable[[Task, Result], None],
        cancel: CancelToken,
    ) -> None:
        """Check every task (until cancelled: then the answers being checked finish)."""
        exhausted = False
        while True:
            for w in self.workers:
                if w.task is None and not exhausted and not cancel.cancelled:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                        break
                    w.conn.send(task)
                    w.task, w.deadline = task, time.monotonic() + self.timeout
            busy = [w for w in self.workers if w.task is not None]
            if not busy:
                return
            now = time.monotonic()
            timeout = max(0.0, min(min(w.deadline for w in busy) - now, 0.1))
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout))
            for w in busy:
                task = w.task
                assert task is not None
                if w.conn in ready:
                    try:
                        message = w.conn.recv()
                    except (EOFError, OSError):
                        on_result(task, ("error", None, w.exit_reason()))
                        self._replace(w)
                        continue
                    w.task = None
                    on_result(task, tuple(message[1:]))  # type: ignore[arg-type]
                elif w.proc.sentinel in ready:
                    on_result(task, ("error", None, w.exit_reason()))
                    self._replace(w)
                elif time.monotonic() >= w.deadline:
                    on_result(task, ("error", None, f"timed out after {self.timeout:g} s"))
                    self._replace(w)


# -- the job --------------------------------------------------------------------------------------


def run_check(
    config: CheckConfig,
    ws: Any,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
) -> CurationSummary:
    """Check every answer of a collection not already decided by this check (see the
    module docstring). Raises Cancelled after storing every decision when stopped, UserError
    on bad input (no such collection, a check that cannot be loaded)."""
    cancel = cancel or CancelToken()
    spec = parse_check(config.check_spec)
    settings = {**config.to_dict(), "check_digest": spec.digest}
    cur = Curation(ws, config.collection, "check", spec.decider, settings)
    sink = cur.sink(sink)
    checking = _Checking(config, spec, cur, sink, cancel)
    with cur.running("run the same check again to continue") as outcome:
        checking.run()
        outcome.message = cur.describe()
        outcome.status = "cancelled" if cancel.cancelled else "done"
    sink.emit(Log(outcome.message))
    return cur.summary(outcome.status, outcome.message, processes_replaced=checking.replaced)


class _Checking:
    """One run of a check: feeds the pool the undecided answers, commits its decisions."""

    def __init__(
        self, config: CheckConfig, spec: CheckSpec, cur: Curation, sink: Sink, cancel: CancelToken
    ) -> None:
        self.config, self.spec, self.cur, self.sink, self.cancel = config, spec, cur, sink, cancel
        self.settings = [spec.decider, spec.digest, config.threshold, config.on_error]
        self.bases: dict[tuple[int, int], str] = {}
        self.buffer: list[Decision] = []
        self.flushed = time.monotonic()
        self.done = 0
        self.replaced = 0  # worker processes replaced after a hang or a crash
        self.total = count_answers(cur.ws, cur.collection_id)

    def run(self) -> None:
        self.sink.emit(
            Log(f"checking {self.total:,} answers of {self.cur.collection!r} with {self.spec.name}")
        )
        self.cur.report(self.sink, 0, self.total)
        with (
            self.cur.lease.beating(),
            CheckPool(self.spec, self.config.workers, self.config.timeout) as pool,
        ):
            pool.run(self._tasks(), self._on_result, self.cancel)
            self.replaced = pool.replaced
        self._flush()
        self.cur.report(self.sink, self.done, self.total)

    def _tasks(self) -> Iterator[Task]:
        page: list[Answer] = []
        for answer in iter_answers(self.cur.ws, self.cur.collection_id):
            page.append(answer)
            if len(page) == 500:
                yield from self._undecided(page)
                page = []
        yield from self._undecided(page)

    def _undecided(self, page: list[Answer]) -> Iterator[Task]:
        bases = {a.key: basis(self.settings, a.key, a.text) for a in page}
        decided = self.cur.decided(bases.values())
        for a in page:
            if bases[a.key] in decided:
                self.cur.counts["skipped"] += 1
                self.done += 1
                continue
            self.bases[a.key] = bases[a.key]
            yield (a.key, a.prompt, a.text, a.reference)
        self._progress()

    def _on_result(self, task: Task, result: Result) -> None:
        (row_id, sample), (status, score, reason) = task[0], result
        threshold = self.config.threshold
        if status == "ok" and score is not None:
            review = "accepted" if score >= threshold else "rejected"
            if reason is None:
                verdict = "passed" if review == "accepted" else "failed"
                reason = verdict if score in (0.0, 1.0) else f"{verdict}: score {score:.2f}"
        else:
            self.cur.counts["errors"] += 1
            review = "rejected" if self.config.on_error == "reject" else "pending"
        self.buffer.append(
            Decision(
                row_id,
                sample,
                review,
                score,
                reason,
                self.spec.decider,
                self.bases.pop((row_id, sample), None),
            )
        )
        self.done += 1
        if len(self.buffer) >= FLUSH_EVERY or time.monotonic() - self.flushed >= FLUSH_EVERY_S:
            self._flush()
            self._progress()

    def _flush(self) -> None:
        self.cur.record(self.buffer)
        self.buffer = []
        self.flushed = time.monotonic()

    def _progress(self) -> None:
        self.cur.report(self.sink, self.done, self.total)
