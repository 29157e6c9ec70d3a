"""The collection store: collections, the shared response cache, reading, review, listing.

A collection pairs a dataset with a teacher and request parameters. Each (dataset row,
sample) is a `collection_items` row with a state (`queued`, `in_flight`, `retrying`,
`done`, `failed` + error) and a review (`pending`, `accepted`, `rejected`, optional edited
text) with the score, reason and decider of the decision in force (every decision is kept:
`kdstudio.collect.decisions`). The response itself lives in `responses`, keyed by a content hash, so two
collections that make the same request share one response and nobody pays twice.

Readers:
- training reads examples only through `iter_examples` (done, not rejected, edited text
  instead of the original; the original response stays stored);
- `outputs list` and the GUI page through `list_items`/`count_items` with an `ItemFilter`.

Writers: the collection job (`kdstudio.collect.ledger`) through `create_collection` and
`insert_response`; an import with answers through `add_imported_responses`; a person's
review through `set_review`, the automatic curators (`kdstudio.curate`) through
`decisions.record`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdstudio.collect import decisions
from kdstudio.errors import NotFound, UserError
from kdstudio.formatting import by_name
from kdstudio.logprobs import TokenLogprobs, decode, encode
from kdstudio.teachers import Response
from kdstudio.workspace import Workspace

STATES = ("queued", "in_flight", "retrying", "done", "failed")
REVIEWS = decisions.REVIEWS
PAGE = 500


def content_hash(parts: Any) -> str:
    """sha256 of the canonical JSON of `parts` (sorted keys, no whitespace, UTF-8)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_messages(messages_json: str | None, prompt: str, system: str | None) -> list[dict]:
    """The chat messages sent for a dataset row: its system prompt and earlier turns, ending
    with the user's turn (a trailing assistant answer, if the dataset kept one, is dropped)."""
    try:
        messages = json.loads(messages_json) if messages_json else []
    except json.JSONDecodeError:
        messages = []
    if not isinstance(messages, list) or not messages:
        messages = [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in messages if isinstance(m, dict)]
    while messages and messages[-1].get("role") == "assistant":
        messages.pop()
    if system and (not messages or messages[0].get("role") != "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


# -- collections ------------------------------------------------------------------------------


def _collection_row(ws: Workspace, collection: str | int) -> sqlite3.Row:
    if isinstance(collection, int):
        row = ws.query_one("SELECT * FROM collections WHERE id=?", (collection,))
    else:
        row = ws.query_one("SELECT * FROM collections WHERE name=?", (collection,))
    if row is None:
        raise NotFound("collection", str(collection), collection_names(ws))
    return row


def collection_id(ws: Workspace, collection: str | int) -> int:
    return int(_collection_row(ws, collection)["id"])


def collection_names(ws: Workspace) -> list[str]:
    return by_name([r[0] for r in ws.query("SELECT name FROM collections")])


def create_collection(
    ws: Workspace,
    name: str,
    *,
    dataset_id: int,
    teacher_name: str | None,
    params: dict[str, Any],
    source: str = "teacher",
    teacher_model: str | None = None,
    teacher_endpoint: str | None = None,
) -> int:
    """Create a collection, or return the existing one of that name when it matches.

    Re-running the same command resumes, so an existing collection with the same dataset,
    teacher and parameters is returned as is; one with different settings is an error, and
    so is one whose answers came from another model or endpoint than the teacher's now
    (`teacher_model`, `teacher_endpoint`: resuming it would mix two models' answers).
    """
    from kdstudio.config import check_name

    check_name("collection", name)
    now = time.time()
    params_json = json.dumps(params, sort_keys=True)
    with ws.tx() as con:
        row = con.execute("SELECT * FROM collections WHERE name=?", (name,)).fetchone()
        if row is not None:
            diff = settings_difference(
                row, dataset_id, teacher_name, params, teacher_model, teacher_endpoint
            )
            if diff is not None and diff.teacher:
                raise UserError(
                    f"collection {name!r} was collected from another model ({diff}); resuming "
                    "it would mix two models' answers: choose another --name to collect from "
                    f"teacher {teacher_name!r} as it is now, or put the teacher back as it was "
                    "to resume"
                )
            if diff is not None:
                raise UserError(
                    f"collection {name!r} already exists with different settings ({diff}); "
                    "re-run with the same settings to resume it, or choose another --name"
                )
            if row["teacher_endpoint"] is None and teacher_endpoint is not None:
                con.execute(  # made before kdstudio recorded it: from now on it is known
                    "UPDATE collections SET teacher_model=?, teacher_endpoint=? WHERE id=?",
                    (teacher_model, teacher_endpoint, row["id"]),
                )
            return int(row["id"])
        teacher = con.execute("SELECT id FROM teachers WHERE name=?", (teacher_name,)).fetchone()
        cur = con.execute(
            "INSERT INTO collections(name, teacher_id, teacher_name, dataset_id, params, source,"
            " teacher_model, teacher_endpoint, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                teacher[0] if teacher else None,
                teacher_name,
                dataset_id,
                params_json,
                source,
                teacher_model,
                teacher_endpoint,
                now,
                now,
            ),
        )
        return int(cur.lastrowid)


class Difference(str):
    """What differs between a collection and settings that would continue it (the text);
    `teacher` says whether it is the teacher's model or endpoint."""

    teacher: bool = False


def settings_difference(
    row: sqlite3.Row,
    dataset_id: int,
    teacher: str | None,
    params: dict[str, Any],
    model: str | None = None,
    endpoint: str | None = None,
) -> Difference | None:
    """Why these settings cannot continue the collection in `row`, or None when they can:
    another dataset, teacher, request parameters, or another model or endpoint behind the
    same teacher name (unknown for collections made before kdstudio recorded them)."""
    from kdstudio.formatting import url

    if row["dataset_id"] != dataset_id:
        return Difference("a different dataset")
    if row["teacher_name"] != teacher:
        return Difference(f"teacher {row['teacher_name']!r}, not {teacher!r}")
    old = json.loads(row["params"] or "{}")
    if old != params:
        keys = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        return Difference(", ".join(f"{k}: {old.get(k)!r} -> {params.get(k)!r}" for k in keys))
    was_model, was_endpoint = row["teacher_model"], row["teacher_endpoint"]
    changes = []
    # A password is no part of which endpoint it is (and is not stored): compare as shown.
    if was_endpoint is not None and endpoint is not None and url(was_endpoint) != url(endpoint):
        was_local, now_local = _local_folder(was_endpoint), _local_folder(endpoint)
        if was_local is not None and was_local == now_local:
            changes.append(f"the files of its model folder {now_local} changed since")
        else:
            shown = [was_local or url(was_endpoint), now_local or url(endpoint)]
            changes.append(f"endpoint: {shown[0]!r} -> {shown[1]!r}")
    if was_model is not None and model is not None and was_model != model:
        changes.append(f"model: {was_model!r} -> {model!r}")
    if not changes:
        return None
    diff = Difference(f"teacher {teacher!r} " + ", ".join(changes))
    diff.teacher = True
    return diff


def _local_folder(endpoint: str) -> str | None:
    """The model folder of a local teacher's endpoint (`local:<folder>:<fingerprint>`)."""
    if not endpoint.startswith("local:"):
        return None
    return endpoint[len("local:") :].rsplit(":", 1)[0]


@dataclass
class CollectionInfo:
    id: int
    name: str
    teacher_name: str | None
    dataset_id: int
    dataset_name: str | None
    params: dict[str, Any]
    source: str
    status: str
    message: str | None
    counts: dict[str, int]
    spend: float
    prompt_tokens: int
    completion_tokens: int
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def get_collection(ws: Workspace, collection: str | int) -> CollectionInfo:
    row = _collection_row(ws, collection)
    ds = ws.query_one("SELECT name FROM datasets WHERE id=?", (row["dataset_id"],))
    usage = ws.query_one(
        "SELECT COALESCE(SUM(ci.cost), 0), COALESCE(SUM(r.prompt_tokens), 0),"
        " COALESCE(SUM(r.completion_tokens), 0) FROM collection_items ci"
        " LEFT JOIN responses r ON r.hash = ci.hash AND ci.status = 'done'"
        " WHERE ci.collection_id=?",
        (row["id"],),
    )
    return CollectionInfo(
        id=row["id"],
        name=row["name"],
        teacher_name=row["teacher_name"],
        dataset_id=row["dataset_id"],
        dataset_name=ds[0] if ds else None,
        params=json.loads(row["params"] or "{}"),
        source=row["source"],
        status=row["status"],
        message=row["message"],
        counts=collection_status_counts(ws, row["id"]),
        spend=float(usage[0]),
        prompt_tokens=int(usage[1]),
        completion_tokens=int(usage[2]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def list_collections(ws: Workspace) -> list[CollectionInfo]:
    return [get_collection(ws, name) for name in collection_names(ws)]


def collection_teachers(ws: Workspace) -> dict[str, str | None]:
    """{collection: its teacher's name} for every collection (None: imported answers)."""
    return {r[0]: r[1] for r in ws.query("SELECT name, teacher_name FROM collections")}


def collection_overview(ws: Workspace) -> list[dict[str, Any]]:
    """Every collection with its teacher, source and finished answers, by name: one cheap
    query (an index count per collection), for pickers that refresh often."""
    rows = ws.query(
        "SELECT c.name, c.teacher_name, c.source, (SELECT COUNT(*) FROM collection_items ci"
        " WHERE ci.collection_id = c.id AND ci.status = 'done') AS done FROM collections c"
        " ORDER BY c.name"
    )
    return [dict(r) for r in rows]


def collection_status_counts(ws: Workspace, collection: str | int) -> dict[str, int]:
    """{state: count} for every state (zeros included), plus `total`."""
    cid = collection_id(ws, collection)
    counts = dict.fromkeys(STATES, 0)
    for status, n in ws.query(
        "SELECT status, COUNT(*) FROM collection_items WHERE collection_id=? GROUP BY status",
        (cid,),
    ):
        counts[status] = n
    counts["total"] = sum(counts[s] for s in STATES)
    return counts


def review_counts(ws: Workspace, collection: str | int) -> dict[str, int]:
    cid = collection_id(ws, collection)
    counts = dict.fromkeys(REVIEWS, 0)
    for review, n in ws.query(
        "SELECT review, COUNT(*) FROM collection_items WHERE collection_id=? AND status='done'"
        " GROUP BY review",
        (cid,),
    ):
        counts[review] = n
    return counts


# -- responses ------------------------------------------------------------------------------


def insert_response(con: sqlite3.Connection, hash_: str, resp: Response) -> bool:
    """Store a response under `hash_` (inside the caller's transaction); False if one exists."""
    blob = encode(resp.logprobs) if resp.logprobs is not None else None
    mean = resp.logprobs.mean_logprob() if resp.logprobs is not None else None
    cur = con.execute(
        "INSERT OR IGNORE INTO responses(hash, endpoint, model, source, text, finish_reason,"
        " prompt_tokens, completion_tokens, cost, logprobs, mean_logprob, n_chars, latency,"
        " created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            hash_,
            resp.endpoint,
            resp.model,
            resp.source,
            resp.text,
            resp.finish_reason,
            resp.prompt_tokens,
            resp.completion_tokens,
            resp.cost,
            blob,
            mean,
            len(resp.text),
            resp.latency,
            time.time(),
        ),
    )
    return cur.rowcount > 0


def add_imported_response(
    ws: Workspace,
    collection: str | int,
    *,
    dataset_name: str,
    row_id: int,
    idx: int,
    text: str,
    sample: int = 0,
    logprobs: TokenLogprobs | None = None,
) -> None:
    """Store an answer that came with an imported file as a done item of `collection`.

    The response is hashed as ["import", dataset_name, idx, sample], so re-importing the
    same file is idempotent. Create the collection first with
    `create_collection(ws, name, dataset_id=..., teacher_name=None, params={}, source="import")`.
    For many rows use `add_imported_responses` (one statement per page, much faster).
    """
    add_imported_responses(
        ws, collection, dataset_name=dataset_name, rows=[(row_id, idx, text, sample, logprobs)]
    )


def add_imported_responses(
    ws: Workspace,
    collection: str | int,
    *,
    dataset_name: str,
    rows: Iterable[tuple],
    page: int = 5000,
) -> int:
    """Bulk `add_imported_response`: `rows` of (row_id, idx, text[, sample[, logprobs]]).

    Runs in one transaction (or joins the caller's); returns how many rows were stored.
    """
    cid = collection_id(ws, collection)
    n = 0
    with ws.tx() as con:
        buf: list[tuple] = []
        for row in rows:
            buf.append(row)
            if len(buf) >= page:
                n += _store_imported(con, cid, dataset_name, buf)
                buf = []
        n += _store_imported(con, cid, dataset_name, buf)
    return n


def _store_imported(con: sqlite3.Connection, cid: int, dataset_name: str, rows: list[tuple]) -> int:
    now = time.time()
    responses, items = [], []
    for row in rows:
        row_id, idx, text = row[0], row[1], row[2]
        sample = row[3] if len(row) > 3 else 0
        lp = row[4] if len(row) > 4 else None
        hash_ = content_hash(["import", dataset_name, idx, sample])
        blob = encode(lp) if lp is not None else None
        mean = lp.mean_logprob() if lp is not None else None
        responses.append((hash_, text, blob, mean, len(text), now))
        items.append((cid, row_id, sample, hash_, now))
    con.executemany(
        "INSERT OR IGNORE INTO responses(hash, source, text, logprobs, mean_logprob, n_chars,"
        " created_at) VALUES (?, 'import', ?, ?, ?, ?, ?)",
        responses,
    )
    con.executemany(
        "INSERT INTO collection_items(collection_id, row_id, sample, hash, status, updated_at)"
        " VALUES (?,?,?,?, 'done', ?) ON CONFLICT (collection_id, row_id, sample)"
        " DO UPDATE SET hash=excluded.hash, status='done', error=NULL",
        items,
    )
    return len(rows)


# -- examples for training ------------------------------------------------------------------


@dataclass
class Example:
    """One training example: the prompt messages and the teacher's (or the editor's) answer.

    `logprobs` is None when the teacher gave none, and also when the text was edited (the
    teacher's logprobs describe the original text, not the edited one).
    """

    row_id: int
    sample: int
    messages: list[dict]
    response: str
    logprobs: TokenLogprobs | None
    review: str
    score: float | None = None  # the decision in force (see kdstudio.collect.decisions)
    decider: str | None = None
    collection: str = ""

    @property
    def person_accepted(self) -> bool:
        return self.review == "accepted" and self.decider == decisions.PERSON


def iter_examples(
    ws: Workspace, collection_name: str, *, include_rejected: bool = False
) -> Iterator[Example]:
    """Done items of a collection in dataset order (rejected ones only if asked), with
    their review, score and decider.

    Reads in pages on this thread's connection, so memory stays flat on big collections.
    """
    cid = collection_id(ws, collection_name)
    reject = "" if include_rejected else " AND ci.review != 'rejected'"
    last = (-1, -1)
    while True:
        # Keyset paging on the primary key (dataset rows are stored in dataset order), so
        # each page is an index range, never a sort of the whole collection.
        rows = ws.query(
            "SELECT ci.row_id, ci.sample, ci.review, ci.score, ci.decider, ci.edited_text, d.idx,"
            " d.messages, d.prompt, d.system, r.text, r.logprobs FROM collection_items ci"
            " JOIN dataset_rows d ON d.id = ci.row_id JOIN responses r ON r.hash = ci.hash"
            f" WHERE ci.collection_id=? AND (ci.row_id, ci.sample) > (?, ?) AND ci.status='done'{reject}"
            " ORDER BY ci.row_id, ci.sample LIMIT ?",
            (cid, last[0], last[1], PAGE),
        )
        for r in rows:
            edited = r["edited_text"] is not None
            yield Example(
                row_id=r["row_id"],
                sample=r["sample"],
                messages=prompt_messages(r["messages"], r["prompt"], r["system"]),
                response=r["edited_text"] if edited else r["text"],
                logprobs=decode(r["logprobs"])
                if r["logprobs"] is not None and not edited
                else None,
                review=r["review"],
                score=r["score"],
                decider=r["decider"],
                collection=collection_name,
            )
        if len(rows) < PAGE:
            return
        last = (rows[-1]["row_id"], rows[-1]["sample"])


def set_review(
    ws: Workspace,
    collection: str | int,
    row_id: int,
    sample: int,
    review: str,
    edited_text: str | None = None,
    *,
    reason: str | None = None,
) -> None:
    """A person's decision: accept, reject or reset an item, optionally with edited text (the
    original stays stored) and a reason. It is recorded in the item's history and stands
    against later automatic curators (see `kdstudio.collect.decisions`).

    `edited_text=None` keeps an earlier edit; pass `clear_edit(...)` to drop it.
    """
    if review not in REVIEWS:
        raise UserError(f"review must be one of {', '.join(REVIEWS)}; got {review!r}")
    cid = collection_id(ws, collection)
    if edited_text is not None and reason is None:
        reason = "answer edited"
    with ws.tx() as con:
        if edited_text is not None:
            con.execute(
                "UPDATE collection_items SET edited_text=? WHERE collection_id=? AND row_id=?"
                " AND sample=?",
                (edited_text, cid, row_id, sample),
            )
        decision = decisions.Decision(row_id, sample, review, None, reason, decisions.PERSON)
        if decisions.record(con, cid, [decision])["missing"]:
            raise UserError(
                f"collection {collection!r} has no item for row {row_id} sample {sample}"
            )


def clear_edit(ws: Workspace, collection: str | int, row_id: int, sample: int) -> None:
    """Go back to the teacher's original text for an item."""
    ws.db.execute(
        "UPDATE collection_items SET edited_text=NULL, updated_at=? WHERE collection_id=? AND row_id=? AND sample=?",
        (time.time(), collection_id(ws, collection), row_id, sample),
    )


# -- listing, paging, search, filters -------------------------------------------------------


@dataclass
class ItemFilter:
    """What `outputs list` and the GUI's table show. None means "any"."""

    status: str | None = None
    review: str | None = None
    search: str | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    has_logprobs: bool | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    scored: bool | None = None  # has a score (from a check, a judge or best-of-n)
    decider: str | None = None  # `person`, `check:NAME`...; a bare kind (`check`) takes any
    order: str = "idx"  # idx | confidence | length | cost | score

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATES:
            raise UserError(f"--status must be one of {', '.join(STATES)}; got {self.status!r}")
        if self.review is not None and self.review not in REVIEWS:
            raise UserError(f"--review must be one of {', '.join(REVIEWS)}; got {self.review!r}")
        if self.order not in _ORDERS:
            raise UserError(f"order must be one of {', '.join(_ORDERS)}; got {self.order!r}")


_ORDERS = {
    # Dataset rows are stored in dataset order, so row id order is dataset order (and an
    # index walk, not a sort); the other orders sort the matching rows.
    "idx": "ci.row_id, ci.sample",
    "confidence": "r.mean_logprob IS NULL, r.mean_logprob, ci.row_id, ci.sample",
    "length": "r.n_chars IS NULL, r.n_chars, ci.row_id, ci.sample",
    "cost": "ci.cost DESC, ci.row_id, ci.sample",
    "score": "ci.score IS NULL, ci.score, ci.row_id, ci.sample",
}


def _where(cid: int, f: ItemFilter) -> tuple[str, list[Any]]:
    clauses, params = ["ci.collection_id = ?"], [cid]
    if f.status:
        clauses.append("ci.status = ?")
        params.append(f.status)
    if f.review:
        clauses.append("ci.review = ?")
        params.append(f.review)
    if f.min_chars is not None:
        clauses.append("COALESCE(length(ci.edited_text), r.n_chars) >= ?")
        params.append(f.min_chars)
    if f.max_chars is not None:
        clauses.append("COALESCE(length(ci.edited_text), r.n_chars) <= ?")
        params.append(f.max_chars)
    if f.has_logprobs is not None:
        clauses.append(
            "r.logprobs IS NOT NULL" if f.has_logprobs else "(r.id IS NULL OR r.logprobs IS NULL)"
        )
    if f.min_confidence is not None:
        clauses.append("r.mean_logprob >= ?")
        params.append(math.log(max(f.min_confidence, 1e-30)))
    if f.max_confidence is not None:
        clauses.append("r.mean_logprob <= ?")
        params.append(math.log(max(f.max_confidence, 1e-30)))
    if f.min_score is not None:
        clauses.append("ci.score >= ?")
        params.append(f.min_score)
    if f.max_score is not None:
        clauses.append("ci.score <= ?")
        params.append(f.max_score)
    if f.scored is not None:
        clauses.append("ci.score IS NOT NULL" if f.scored else "ci.score IS NULL")
    if f.decider:
        if ":" in f.decider or f.decider == decisions.PERSON:
            clauses.append("ci.decider = ?")
            params.append(f.decider)
        else:  # a kind: every check, every judge...
            clauses.append("ci.decider LIKE ?")
            params.append(f"{f.decider}:%")
    from kdstudio.data.store import fts_query  # one query syntax for every search box

    q = fts_query(f.search) if f.search else None
    if q:
        like = f"%{f.search}%"
        clauses.append(
            "(r.id IN (SELECT rowid FROM response_fts WHERE response_fts MATCH ?)"
            " OR d.prompt LIKE ? OR ci.edited_text LIKE ?)"
        )
        params += [q, like, like]
    return " AND ".join(clauses), params


_FROM = (
    " FROM collection_items ci JOIN dataset_rows d ON d.id = ci.row_id"
    " LEFT JOIN responses r ON r.hash = ci.hash AND ci.status = 'done'"
)


@dataclass
class Item:
    """One row of `outputs list` / the GUI's outputs table."""

    row_id: int
    idx: int
    sample: int
    status: str
    error: str | None
    attempts: int
    review: str
    prompt: str
    response: str | None
    edited: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cached: bool
    has_logprobs: bool
    confidence: float | None
    score: float | None = None
    reason: str | None = None
    decider: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def count_items(ws: Workspace, collection: str | int, filt: ItemFilter | None = None) -> int:
    filt = filt or ItemFilter()
    where, params = _where(collection_id(ws, collection), filt)
    plain = filt.search is None and filt.min_chars is None and filt.max_chars is None
    plain = plain and filt.has_logprobs is None and filt.min_confidence is None
    plain = plain and filt.max_confidence is None
    source = " FROM collection_items ci" if plain else _FROM  # states and reviews: index only
    return int(ws.query_one(f"SELECT COUNT(*){source} WHERE {where}", params)[0])


def list_items(
    ws: Workspace,
    collection: str | int,
    filt: ItemFilter | None = None,
    *,
    offset: int = 0,
    limit: int = 100,
) -> list[Item]:
    """One page of items matching `filt`, in `filt.order`."""
    filt = filt or ItemFilter()
    where, params = _where(collection_id(ws, collection), filt)
    rows = ws.query(
        "SELECT ci.row_id, d.idx, ci.sample, ci.status, ci.error, ci.attempts, ci.review,"
        " d.prompt, ci.edited_text, r.text, r.finish_reason, r.prompt_tokens,"
        " r.completion_tokens, ci.cost, ci.cached, r.logprobs IS NOT NULL AS has_lp,"
        " r.mean_logprob, ci.score, ci.reason, ci.decider"
        f"{_FROM} WHERE {where} ORDER BY {_ORDERS[filt.order]} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return [_item(r) for r in rows]


def _item(r: sqlite3.Row) -> Item:
    edited = r["edited_text"] is not None
    return Item(
        row_id=r["row_id"],
        idx=r["idx"],
        sample=r["sample"],
        status=r["status"],
        error=r["error"],
        attempts=r["attempts"],
        review=r["review"],
        prompt=r["prompt"],
        response=r["edited_text"] if edited else r["text"],
        edited=edited,
        finish_reason=r["finish_reason"],
        prompt_tokens=r["prompt_tokens"] or 0,
        completion_tokens=r["completion_tokens"] or 0,
        cost=r["cost"] or 0.0,
        cached=bool(r["cached"]),
        has_logprobs=bool(r["has_lp"]),
        confidence=math.exp(r["mean_logprob"]) if r["mean_logprob"] is not None else None,
        score=r["score"],
        reason=r["reason"],
        decider=r["decider"],
    )


@dataclass
class ItemDetail:
    """Everything about one item, for the GUI's detail view."""

    item: Item
    messages: list[dict]
    original: str | None
    logprobs: TokenLogprobs | None
    latency: float | None
    history: list[decisions.Past] = field(default_factory=list)  # every decision, oldest first


def get_item(ws: Workspace, collection: str | int, row_id: int, sample: int = 0) -> ItemDetail:
    cid = collection_id(ws, collection)
    r = ws.query_one(
        "SELECT ci.row_id, d.idx, ci.sample, ci.status, ci.error, ci.attempts, ci.review,"
        " d.prompt, d.messages, d.system, ci.edited_text, r.text, r.finish_reason,"
        " r.prompt_tokens, r.completion_tokens, ci.cost, ci.cached,"
        " r.logprobs IS NOT NULL AS has_lp, r.mean_logprob, r.logprobs, r.latency,"
        " ci.score, ci.reason, ci.decider"
        f"{_FROM} WHERE ci.collection_id=? AND ci.row_id=? AND ci.sample=?",
        (cid, row_id, sample),
    )
    if r is None:
        raise UserError(f"collection {collection!r} has no item for row {row_id} sample {sample}")
    return ItemDetail(
        item=_item(r),
        messages=prompt_messages(r["messages"], r["prompt"], r["system"]),
        original=r["text"],
        logprobs=decode(r["logprobs"]) if r["logprobs"] is not None else None,
        latency=r["latency"],
        history=decisions.history(ws.db, cid, row_id, sample),
    )


# -- curation from the CLI, and export ------------------------------------------------------


def row_id_for_index(ws: Workspace, collection: str | int, idx: int) -> int:
    """The dataset row id behind the `#` (row index) that `outputs list` and the window show."""
    info = get_collection(ws, collection)
    row = ws.query_one(
        "SELECT id FROM dataset_rows WHERE dataset_id=? AND idx=?", (info.dataset_id, idx)
    )
    if row is None:
        n = ws.query_one(
            "SELECT count(*) FROM dataset_rows WHERE dataset_id=?", (info.dataset_id,)
        )[0]
        raise UserError(f"collection {info.name!r} has no row #{idx} (its rows are #0 to #{n - 1})")
    return int(row[0])


def export_items(
    ws: Workspace,
    collection: str | int,
    path: str | Path,
    *,
    keys: list[tuple[int, int]] | None = None,
    filt: ItemFilter | None = None,
) -> int:
    """Write finished items as chat JSONL (prompt turns + the answer, edits applied).

    `keys` picks items by (row_id, sample) (the window's selection); otherwise every item
    matching `filt` is written. The file appears complete or not at all. Returns the count.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    done_filter = filt or ItemFilter()
    if done_filter.status not in (None, "done"):
        raise UserError("only finished answers (status done) can be exported")
    done_filter = dataclasses.replace(done_filter, status="done")

    def chosen() -> Iterator[Item]:
        if keys is not None:
            for row_id, sample in keys:
                item = get_item(ws, collection, row_id, sample).item
                if item.status == "done":
                    yield item
            return
        offset = 0
        while page := list_items(ws, collection, done_filter, offset=offset, limit=PAGE):
            yield from page
            offset += len(page)

    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for item in chosen():
                detail = get_item(ws, collection, item.row_id, item.sample)
                record = {
                    "messages": [
                        *detail.messages,
                        {"role": "assistant", "content": item.response or ""},
                    ],
                    "review": item.review,
                    "edited": item.edited,
                    "row": item.idx,
                    "sample": item.sample,
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
