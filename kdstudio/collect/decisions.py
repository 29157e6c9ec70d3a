"""Review decisions: the one in force for each answer, and every decision ever made.

A decision is a verdict (`pending`, `accepted`, `rejected`), a score (0..1, or none), a
reason, and who decided: `person` (A/R/E in the window, `outputs review|edit`), a check
(`check:<name>`), a judge (`judge:<teacher>`) or best-of-n (`best:<by>`). Every decision is
appended to `review_history`; the item's own columns (`review`, `score`, `reason`,
`decider`) hold the one in force. Answers are never deleted or overwritten.

Rules:
- A person's accept or reject stands: an automatic curator's later decision on that answer
  is recorded in the history (`applied` = 0) and shown there, but does not replace it. A
  person setting an answer back to pending hands it back to the curators.
- An automatic decision identical to the one in force is not recorded again, so re-running
  a curator over unchanged answers adds nothing.
- `basis` names what a decision was based on (a hash of the curator's settings and the
  answer it saw): a re-run skips answers whose basis it has already decided.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PERSON = "person"
REVIEWS = ("pending", "accepted", "rejected")


@dataclass(frozen=True)
class Decision:
    """One curator's decision on one answer (row and sample of a collection)."""

    row_id: int
    sample: int
    review: str
    score: float | None
    reason: str | None
    decider: str
    basis: str | None = None


def record(
    con: Any,
    collection_id: int,
    decisions: Iterable[Decision],
    *,
    curation_id: int | None = None,
    now: float | None = None,
) -> dict[str, int]:
    """Record decisions inside the caller's transaction; returns counts: `applied` (now in
    force), `kept` (a person's decision stood), `unchanged` (identical to the one in force),
    `missing` (no such item)."""
    now = time.time() if now is None else now
    counts = dict.fromkeys(("applied", "kept", "unchanged", "missing"), 0)
    history, updates = [], []
    for d in decisions:
        if d.review not in REVIEWS:
            raise ValueError(f"review must be one of {', '.join(REVIEWS)}; got {d.review!r}")
        cur = con.execute(
            "SELECT review, score, reason, decider FROM collection_items"
            " WHERE collection_id=? AND row_id=? AND sample=?",
            (collection_id, d.row_id, d.sample),
        ).fetchone()
        if cur is None:
            counts["missing"] += 1
            continue
        automatic = d.decider != PERSON
        if automatic and (cur[0], cur[1], cur[2], cur[3]) == (
            d.review,
            d.score,
            d.reason,
            d.decider,
        ):
            counts["unchanged"] += 1
            continue
        person_stands = automatic and cur[3] == PERSON and cur[0] != "pending"
        applied = 0 if person_stands else 1
        counts["kept" if person_stands else "applied"] += 1
        history.append(
            (
                collection_id,
                d.row_id,
                d.sample,
                d.review,
                d.score,
                d.reason,
                d.decider,
                d.basis,
                curation_id,
                applied,
                now,
            )
        )
        if applied:
            # a person handing an answer back (pending) leaves it to the curators again
            decider = None if (not automatic and d.review == "pending") else d.decider
            updates.append(
                (d.review, d.score, d.reason, decider, now, collection_id, d.row_id, d.sample)
            )
    con.executemany(
        "INSERT INTO review_history(collection_id, row_id, sample, review, score, reason,"
        " decider, basis, curation_id, applied, t) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        history,
    )
    con.executemany(
        "UPDATE collection_items SET review=?, score=?, reason=?, decider=?, updated_at=?"
        " WHERE collection_id=? AND row_id=? AND sample=?",
        updates,
    )
    return counts


def decided_bases(con: Any, collection_id: int, bases: Iterable[str]) -> set[str]:
    """Which of these bases already have a decision in the collection's history."""
    bases = list(bases)
    found: set[str] = set()
    for start in range(0, len(bases), 500):
        chunk = bases[start : start + 500]
        rows = con.execute(
            "SELECT DISTINCT basis FROM review_history WHERE collection_id=? AND basis IN"
            f" ({','.join('?' * len(chunk))})",
            (collection_id, *chunk),
        ).fetchall()
        found.update(r[0] for r in rows)
    return found


@dataclass(frozen=True)
class Past:
    """One entry of an answer's history (newest last in `history`)."""

    review: str
    score: float | None
    reason: str | None
    decider: str
    applied: bool
    t: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def history(con: Any, collection_id: int, row_id: int, sample: int) -> list[Past]:
    """Every decision on one answer, oldest first."""
    rows = con.execute(
        "SELECT review, score, reason, decider, applied, t FROM review_history"
        " WHERE collection_id=? AND row_id=? AND sample=? ORDER BY id",
        (collection_id, row_id, sample),
    ).fetchall()
    return [Past(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]


def deciders(con: Any, collection_id: int) -> list[str]:
    """Every decider that has decided something in this collection (for filters)."""
    rows = con.execute(
        "SELECT DISTINCT decider FROM review_history WHERE collection_id=? ORDER BY decider",
        (collection_id,),
    ).fetchall()
    return [r[0] for r in rows]
