"""Best-of-n: of each prompt's samples, accept the best by a score and reject the rest
(`kdstudio outputs best COLLECTION --by check|judge|confidence`).

    summary = best_of_n(BestConfig(collection="prompts.gpt", by="check"), ws, sink)

The score is the latest one a check (`--by check`) or a judge (`--by judge`) gave each
sample (run `outputs check` or `outputs judge` first; with several checks or judges, name
one: `--by check:exact`), or the teacher's own confidence, its mean token probability
(`--by confidence`, from the stored logprobs). Ties go to the more confident sample, then
the lower sample number. A sample without a score ranks below any scored one; a prompt with
none scored is left as it is. `min_score` rejects every sample of a prompt whose best is
below it. A sample a person rejected is never chosen, and a person's decisions stand.

Each decision carries the score and why (`best of 4 by check:exact (score 1.00)`,
`sample 2 scored higher (1.00 vs 0.00)`) under the name `best:BY`. Re-running recomputes
every prompt and records only what changed.
"""

from __future__ import annotations

import math
import time
from itertools import groupby
from typing import Any

from kdstudio.collect import decisions
from kdstudio.collect.decisions import Decision
from kdstudio.curate.config import BestConfig
from kdstudio.curate.job import Answer, Curation, CurationSummary, count_answers, iter_answers
from kdstudio.errors import UserError
from kdstudio.events import CancelToken, Log, Sink
from kdstudio.workspace import Workspace


def best_of_n(
    config: BestConfig,
    ws: Workspace,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
) -> CurationSummary:
    """Accept the best sample of every prompt of a collection, reject the others (see the
    module docstring). Raises Cancelled after storing the prompts decided so far, UserError
    when there is no score to rank by."""
    cancel = cancel or CancelToken()
    cur = Curation(ws, config.collection, "best", f"best:{config.by}", config.to_dict())
    by, scores = _scores(cur, config.by)
    sink = cur.sink(sink)
    prompts = unscored = 0
    with cur.running("run it again to finish") as outcome:
        total = count_answers(ws, cur.collection_id)
        sink.emit(Log(f"best of n on {cur.collection!r} by {by} ({total:,} answers)"))
        done, batch, last = 0, [], time.monotonic()
        for _row, group in groupby(iter_answers(ws, cur.collection_id), key=lambda a: a.row_id):
            if cancel.cancelled:
                break
            samples = list(group)
            done += len(samples)
            prompts += 1
            chosen = _choose(samples, scores, config.min_score, by, cur.decider)
            if chosen is None:
                unscored += 1
                continue
            batch += chosen
            if len(batch) >= 500 or time.monotonic() - last >= 0.5:
                cur.record(batch)
                batch, last = [], time.monotonic()
                cur.report(sink, done, total)
        cur.record(batch)
        cur.report(sink, done, total)
        outcome.message = cur.describe()
        if unscored:
            outcome.message += (
                f"; {unscored:,} prompts had no scored sample and were left as they were"
            )
        if prompts and prompts == total:
            sink.emit(
                Log(
                    f"collection {cur.collection!r} has one sample per prompt: best-of-n only "
                    "accepts each scored answer (or, below --min-score, rejects it)",
                    level="warning",
                )
            )
        outcome.status = "cancelled" if cancel.cancelled else "done"
    sink.emit(Log(outcome.message))
    return cur.summary(
        outcome.status, outcome.message, by=by, prompts=prompts, unscored_prompts=unscored
    )


def _scores(cur: Curation, by: str) -> tuple[str, dict[tuple[int, int], float | None] | None]:
    """(the curator ranked by, {(row, sample): its latest score}); None for confidence,
    which every answer carries itself."""
    if by == "confidence":
        has = cur.ws.query_one(
            "SELECT 1 FROM collection_items ci JOIN responses r ON r.hash=ci.hash"
            " WHERE ci.collection_id=? AND ci.status='done' AND r.mean_logprob IS NOT NULL"
            " LIMIT 1",
            (cur.collection_id,),
        )
        if has is None:
            raise UserError(
                f"collection {cur.collection!r} has no token logprobs to rank by confidence "
                "(collect with --top-logprobs), or rank by check or judge"
            )
        return "confidence", None
    found = [
        d
        for d in decisions.deciders(cur.ws.db, cur.collection_id)
        if d.startswith(f"{by}:") or d == by
    ]
    if not found:
        how = (
            "outputs check COLLECTION --check ..."
            if by.startswith("check")
            else "outputs judge COLLECTION --teacher ..."
        )
        raise UserError(
            f"no {by} has scored collection {cur.collection!r} yet: run `kdstudio {how}` first"
        )
    if len(found) > 1:
        raise UserError(
            f"collection {cur.collection!r} was scored by several: {', '.join(found)}; choose "
            f"one with --by {found[0]}"
        )
    rows = cur.ws.query(
        "SELECT h.row_id, h.sample, h.score FROM review_history h JOIN (SELECT MAX(id) AS id"
        " FROM review_history WHERE collection_id=? AND decider=? GROUP BY row_id, sample) last"
        " ON last.id = h.id",
        (cur.collection_id, found[0]),
    )
    return found[0], {(r["row_id"], r["sample"]): r["score"] for r in rows}


def _score(a: Answer, scores: dict[tuple[int, int], float | None] | None) -> float | None:
    if scores is None:
        return math.exp(a.mean_logprob) if a.mean_logprob is not None else None
    return scores.get(a.key)


def _choose(
    samples: list[Answer],
    scores: dict[tuple[int, int], float | None] | None,
    min_score: float | None,
    by: str,
    decider: str,
) -> list[Decision] | None:
    """The decisions for one prompt's samples; None when none has a score."""
    candidates = [a for a in samples if not a.person_rejected]
    scored = [(a, _score(a, scores)) for a in candidates]
    if not any(s is not None for _, s in scored):
        return None

    def rank(item: tuple[Answer, float | None]) -> tuple[Any, ...]:
        a, s = item
        confidence = a.mean_logprob if a.mean_logprob is not None else -math.inf
        return (s is not None, s if s is not None else 0.0, confidence, -a.sample)

    best, best_score = max(scored, key=rank)
    assert best_score is not None
    n = len(samples)
    if min_score is not None and best_score < min_score:
        why = f"none of the {n} samples is good enough: the best scored {best_score:.2f} < {min_score:g}"
        return [Decision(a.row_id, a.sample, "rejected", s, why, decider) for a, s in scored]
    out = [
        Decision(
            best.row_id,
            best.sample,
            "accepted",
            best_score,
            f"best of {n} by {by} (score {best_score:.2f})",
            decider,
        )
    ]
    for a, s in scored:
        if a is best:
            continue
        if s is not None and s == best_score:
            why = f"sample {best.sample} scores the same ({s:.2f}) and was chosen (more confident or first)"
        else:
            mine = "no score" if s is None else f"{s:.2f}"
            why = f"sample {best.sample} scored higher ({best_score:.2f} vs {mine})"
        out.append(Decision(a.row_id, a.sample, "rejected", s, why, decider))
    return out
