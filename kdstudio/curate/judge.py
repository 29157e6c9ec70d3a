"""Judge: a teacher scores each answer (`kdstudio outputs judge COLLECTION --teacher NAME`).

    summary = run_judge(JudgeConfig(collection="prompts.gpt", teacher="claude"), ws, sink)

The judge's requests are a collection of their own, `COLLECTION.judge.TEACHER` (source
`judge`): one item per answer judged, same dataset rows and samples, whose prompt is the
rubric filled with that answer (`JudgeLedger`). It runs through the collection job itself
(`kdstudio.collect.job.collect`), so the judge gets everything a collection has: adaptive
concurrency and retries (429, 5xx, a malformed body), the response cache (a verdict is never
paid twice: re-judging unchanged answers is free), resume after a stop or a crash, the
budget, the Batch API, and a local teacher as judge. Browse its raw answers like any
collection's.

Each verdict (JSON `{"score": 0-10, "reason": ...}`, or a "score: N" line) becomes a
decision on the judged answer: score / 10, accepted at or above `threshold`, rejected below,
with the judge's reason. An answer the judge gave no readable score for stays pending, with
what the judge said as its reason. Verdicts are applied as soon as the judging stops, also
when it was stopped or ran out of budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from kdstudio.collect import cost
from kdstudio.collect.config import CollectConfig
from kdstudio.collect.decisions import Decision
from kdstudio.collect.ledger import Collection
from kdstudio.collect.runner import Request
from kdstudio.collect.store import CollectionInfo, get_collection, prompt_messages
from kdstudio.curate.config import JudgeConfig
from kdstudio.curate.job import PAGE, Curation, CurationSummary, basis, iter_answers
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import CancelToken, Log, Sink
from kdstudio.workspace import Workspace

PLACEHOLDERS = ("{prompt}", "{answer}", "{reference}")
DEFAULT_RUBRIC = """You are grading one answer to a prompt.

Prompt:
{prompt}

Reference answer (may be "(none)"):
{reference}

Answer to grade:
{answer}

Grade how correct, complete and clear the answer is, from 0 (wrong or useless) to 10 \
(fully correct and clear). If there is a reference answer, judge correctness against it.
Reply with one line of JSON and nothing else:
{"score": <a number from 0 to 10>, "reason": "<one short sentence>"}"""


# -- the rubric and the verdict -------------------------------------------------------------------


def load_rubric(path: str | None) -> str:
    """The rubric text: kdstudio's, or a file's (UserError when it cannot show the answer)."""
    if path is None:
        return DEFAULT_RUBRIC
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--rubric {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--rubric {path}: not UTF-8 text") from None
    if "{answer}" not in text:
        raise UserError(
            f"--rubric {path}: it has no {{answer}} placeholder, so the judge would never see "
            "the answer (write {prompt}, {answer} and {reference} where they go)"
        )
    return text


def _prompt_text(messages: list[dict]) -> str:
    """The prompt as the judge reads it: the user's turn, or the whole conversation."""
    if len(messages) == 1:
        return str(messages[0].get("content", ""))
    return "\n\n".join(f"{m.get('role', 'user').upper()}: {m.get('content', '')}" for m in messages)


def fill_rubric(rubric: str, messages: list[dict], answer: str, reference: str | None) -> str:
    """The rubric with the prompt, the answer and the reference in place (plain replacement:
    a rubric may show JSON with braces of its own)."""
    values = {
        "{prompt}": _prompt_text(messages),
        "{answer}": answer,
        "{reference}": reference if reference and reference.strip() else "(none)",
    }
    pattern = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
    return pattern.sub(lambda m: values[m.group(0)], rubric)


_SCORE_LINE = re.compile(r"(?i)\bscore\b\W{0,4}(-?\d+(?:\.\d+)?)")


def parse_verdict(text: str) -> tuple[float, str]:
    """(score 0-10, reason) from a judge's answer: a JSON object with "score" (anywhere in
    the text), else a "score: N" line. ValueError says why there is none."""
    text = text or ""
    decoder = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            doc, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "score" in doc:
            try:
                score = float(doc["score"])
            except (TypeError, ValueError):
                raise ValueError(f"its score {doc['score']!r} is not a number") from None
            reason = doc.get("reason") or doc.get("explanation") or ""
            return _in_range(score), str(reason).strip()
    found = _SCORE_LINE.search(text)
    if found is None:
        shown = " ".join(text.split())
        shown = shown if len(shown) <= 80 else shown[:79] + "…"
        raise ValueError(f"no score in its answer: {shown!r}" if shown else "an empty answer")
    rest = " ".join((text[: found.start()] + text[found.end() :]).split())
    return _in_range(float(found.group(1))), rest[:300]


def _in_range(score: float) -> float:
    if not math.isfinite(score) or not 0.0 <= score <= 10.0:
        raise ValueError(f"its score {score:g} is outside 0-10")
    return score


# -- the judge's own collection -------------------------------------------------------------------


class JudgeLedger(Collection):
    """The judge's collection: an item per answer of the judged collection (same row and
    sample), whose request is the rubric filled with that answer. Everything else (claims,
    states, the cache, cost) is the collection ledger's own."""

    def __init__(
        self, config: CollectConfig, ws: Workspace, target: CollectionInfo, rubric: str
    ) -> None:
        super().__init__(config, ws)
        self.target, self.rubric = target, rubric
        digest = hashlib.sha256(rubric.encode()).hexdigest()[:16]
        # stored with the collection: judging with another rubric is "other settings"
        self.params = {**self.params, "judge_of": target.name, "rubric": digest}
        self._synced = False

    def judge_messages(
        self, messages: list[dict], answer: str, reference: str | None
    ) -> list[dict]:
        return [{"role": "user", "content": fill_rubric(self.rubric, messages, answer, reference)}]

    def open(self) -> None:
        super().open()
        self.ws.db.execute("UPDATE collections SET source='judge' WHERE id=?", (self.id,))
        if not self._synced:
            self._add_items()
        with self.ws.tx() as con:  # verdicts already in the cache (as Collection.open does)
            con.execute(
                "UPDATE collection_items SET status='done', cached=1, cost=0, error=NULL,"
                " updated_at=? WHERE collection_id=? AND status!='done'"
                " AND hash IN (SELECT hash FROM responses)",
                (time.time(), self.id),
            )

    def _add_items(self) -> None:
        """An item for every finished answer of the judged collection; an answer edited since
        it was judged gets its new rubric request (and is judged again)."""
        now = time.time()
        with self.ws.tx() as con:
            batch = []
            for a in iter_answers(self.ws, self.target.id):
                body = self.body(self.judge_messages(a.messages, a.text, a.reference), 0)
                batch.append((self.id, a.row_id, a.sample, self.request_hash(body, 0), now))
                if len(batch) >= 5000:
                    self._upsert(con, batch)
                    batch = []
            self._upsert(con, batch)
        self._synced = True

    @staticmethod
    def _upsert(con: Any, batch: list[tuple]) -> None:
        con.executemany(
            "INSERT INTO collection_items(collection_id, row_id, sample, hash, status, updated_at)"
            " VALUES (?,?,?,?, 'queued', ?) ON CONFLICT (collection_id, row_id, sample) DO UPDATE"
            " SET hash=excluded.hash, status='queued', error=NULL, updated_at=excluded.updated_at"
            " WHERE hash != excluded.hash",
            batch,
        )

    def queued(self, after: tuple[int, int] = (-1, -1), limit: int = PAGE) -> list[Request]:
        rows = self.ws.query(
            "SELECT j.row_id, j.sample, j.hash, d.idx, d.messages, d.prompt, d.system,"
            " d.reference, COALESCE(t.edited_text, r.text) AS text FROM collection_items j"
            " JOIN collection_items t ON t.collection_id=? AND t.row_id=j.row_id"
            " AND t.sample=j.sample JOIN responses r ON r.hash=t.hash"
            " JOIN dataset_rows d ON d.id=j.row_id WHERE j.collection_id=? AND j.status='queued'"
            " AND (j.row_id, j.sample) > (?, ?) ORDER BY j.row_id, j.sample LIMIT ?",
            (self.target.id, self.id, after[0], after[1], limit),
        )
        requests = []
        for r in rows:
            prompt = prompt_messages(r["messages"], r["prompt"], r["system"])
            messages = self.judge_messages(prompt, r["text"] or "", r["reference"])
            requests.append(
                Request(
                    r["row_id"],
                    r["sample"],
                    r["hash"],
                    self.body(messages, 0),
                    cost.approx_prompt_tokens(messages),
                    r["idx"],
                )
            )
        return requests

    def uncached_prompt_tokens(self) -> Any:
        for a in iter_answers(self.ws, self.target.id):
            messages = self.judge_messages(a.messages, a.text, a.reference)
            hash_ = self.request_hash(self.body(messages, 0), 0)
            if self.ws.query_one("SELECT 1 FROM responses WHERE hash=?", (hash_,)) is None:
                yield cost.approx_prompt_tokens(messages)


def judge_ledger(config: JudgeConfig, ws: Workspace) -> JudgeLedger:
    """The judge's collection for `config` (NotFound for an unknown collection or teacher)."""
    target = get_collection(ws, config.collection)
    if target.source == "judge":
        raise UserError(
            f"collection {target.name!r} holds a judge's verdicts; judge the collection it judged"
        )
    collect_config = CollectConfig(
        teacher=config.teacher,
        dataset=target.dataset_name or "",
        name=config.judge_collection(),
        samples=1,
        max_tokens=config.max_tokens,
        temperature=0.0,
        concurrency=config.concurrency,
        budget=config.budget,
        timeout=config.timeout,
        max_retries=config.max_retries,
        batch_api=config.batch_api,
        local_batch_size=config.local_batch_size,
    )
    return JudgeLedger(collect_config, ws, target, load_rubric(config.rubric))


def estimate_judge(config: JudgeConfig, ws: Workspace) -> cost.CostEstimate:
    """What judging the answers not judged yet could cost (sends and writes nothing)."""
    ledger = judge_ledger(config, ws)
    return ledger.estimate(ledger.uncached_prompt_tokens())


# -- the job --------------------------------------------------------------------------------------


def run_judge(
    config: JudgeConfig,
    ws: Workspace,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
) -> CurationSummary:
    """Judge every answer of a collection (see the module docstring). Raises Cancelled after
    applying every verdict that came back, JobFailed when the judge refuses the job (a bad
    key), UserError on bad input."""
    from kdstudio.collect.job import collect

    cancel = cancel or CancelToken()
    ledger = judge_ledger(config, ws)
    decider = f"judge:{config.teacher}"
    settings = {**config.to_dict(), "rubric_digest": ledger.params["rubric"]}
    cur = Curation(ws, config.collection, "judge", decider, settings)
    sink = cur.sink(sink)
    with cur.running("run the same judge again to continue") as outcome:
        collected = None
        try:
            collected = collect(ledger.config, ws, sink, cancel, ledger=ledger)
        except Cancelled:
            pass  # the verdicts that came back are applied first
        finally:
            if ledger.id is not None:
                _apply_verdicts(cur, ledger, config)
        if collected is None:
            outcome.status, outcome.message = "cancelled", cur.describe()
        else:
            outcome.status = "done" if collected.status == "done" else collected.status
            outcome.message = _describe(cur, ledger, collected)
    sink.emit(Log(outcome.message))
    assert collected is not None  # a stopped judge raised Cancelled above
    return cur.summary(
        outcome.status,
        outcome.message,
        judge_collection=ledger.name,
        spent=collected.spent,
        requests=collected.requests,
        cached=collected.cached,
        failed=collected.counts.get("failed", 0),
    )


def _apply_verdicts(cur: Curation, ledger: JudgeLedger, config: JudgeConfig) -> None:
    """Every verdict stored in the judge's collection becomes a decision on its answer
    (skipping those already applied with these settings)."""
    settings = [cur.decider, ledger.params["rubric"], config.threshold]
    last = (-1, -1)
    while True:
        rows = ledger.ws.query(
            "SELECT j.row_id, j.sample, r.text AS verdict,"
            " COALESCE(t.edited_text, tr.text) AS answer FROM collection_items j"
            " JOIN responses r ON r.hash=j.hash JOIN collection_items t ON t.collection_id=?"
            " AND t.row_id=j.row_id AND t.sample=j.sample JOIN responses tr ON tr.hash=t.hash"
            " WHERE j.collection_id=? AND j.status='done' AND (j.row_id, j.sample) > (?, ?)"
            " ORDER BY j.row_id, j.sample LIMIT ?",
            (ledger.target.id, ledger.id, last[0], last[1], PAGE),
        )
        bases = {}
        for r in rows:
            key = (r["row_id"], r["sample"])
            bases[key] = basis(settings, key, f"{r['answer']}\0{r['verdict']}")
        done = cur.decided(bases.values())
        batch = []
        for r in rows:
            key = (r["row_id"], r["sample"])
            if bases[key] in done:
                cur.counts["skipped"] += 1
                continue
            batch.append(_decision(cur, key, r["verdict"], config.threshold, bases[key]))
        cur.record(batch)
        if len(rows) < PAGE:
            return
        last = (rows[-1]["row_id"], rows[-1]["sample"])


def _decision(
    cur: Curation, key: tuple[int, int], verdict: str, threshold: float, basis_: str
) -> Decision:
    try:
        score, reason = parse_verdict(verdict)
    except ValueError as exc:
        cur.counts["errors"] += 1
        return Decision(
            *key, "pending", None, f"the judge gave no usable score: {exc}", cur.decider, basis_
        )
    score /= 10.0
    review = "accepted" if score >= threshold else "rejected"
    return Decision(*key, review, score, reason or f"scored {score * 10:g}/10", cur.decider, basis_)


def _describe(cur: Curation, ledger: JudgeLedger, collected: Any) -> str:
    line = cur.describe()
    failed = collected.counts.get("failed", 0)
    left = collected.counts.get("queued", 0)
    if failed or left:
        line += (
            f"; {failed + left:,} answers not judged yet ({collected.message}: see "
            f"`kdstudio outputs list {ledger.name} --status failed`)"
        )
    return line
