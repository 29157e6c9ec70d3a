"""Datasets in the workspace: look-up, lazy row access (count, page, search), stats, versions.

Nothing here loads a whole dataset: `page` reads one page by `idx` (dense 0..n-1, so an
offset is a keyset), `search` goes through the FTS5 index, `iter_rows` walks a dataset in
keyset batches. Datasets are immutable; `derive` makes a filtered or edited copy that links
to its parent.

Invariant the queries rely on: within a dataset, row ids increase with `idx` (rows are
always inserted in `idx` order inside one transaction), so a dataset's rows are the ids
between the ids of its first and last row, and FTS5 can restrict a match to that range.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kdstudio.errors import NotFound, UserError
from kdstudio.events import CancelToken, Finished, NullSink, Progress, Sink
from kdstudio.formatting import by_name, duration, natural_key

if TYPE_CHECKING:
    from kdstudio.workspace import Workspace

ROW_COLUMNS = "id, idx, messages, prompt, system, reference, row_key, meta, n_chars"
INSERT_ROW = (
    "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, system, reference, row_key,"
    " meta, n_chars, row_hash) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: where it came from, its size and stats, and its parent if derived."""

    id: int
    name: str
    n_rows: int
    source: str | None
    format: str | None
    mapping: dict[str, str]
    stats: dict[str, Any]
    parent_id: int | None
    parent: str | None
    note: str | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DatasetRow:
    """One row: the prompt turns (`messages`, without the final answer), the final user turn
    (`prompt`), the system prompt, the reference answer if the file had one, its id in the
    file (`row_key`) and the file's other fields (`meta`)."""

    id: int
    idx: int
    messages: list[dict[str, str]]
    prompt: str
    system: str | None
    reference: str | None
    row_key: str | None
    meta: dict[str, Any] | None
    n_chars: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(r: sqlite3.Row) -> DatasetRow:
    return DatasetRow(
        id=r["id"],
        idx=r["idx"],
        messages=json.loads(r["messages"]),
        prompt=r["prompt"],
        system=r["system"],
        reference=r["reference"],
        row_key=r["row_key"],
        meta=json.loads(r["meta"]) if r["meta"] else None,
        n_chars=r["n_chars"],
    )


def row_hash(messages_json: str, reference: str | None) -> int:
    """The content hash duplicate detection compares (prompt turns + reference), as a signed
    64-bit int (fast to sort; `remove_duplicates` also compares the text, so a collision
    never removes a row)."""
    tail = "\x00" if reference is None else reference
    digest = hashlib.blake2b(f"{messages_json}\x1e{tail}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# -- look-up ----------------------------------------------------------------------------------


def dataset_names(ws: Workspace) -> list[str]:
    return by_name([r[0] for r in ws.query("SELECT name FROM datasets")])


def _info(ws: Workspace, r: sqlite3.Row) -> DatasetInfo:
    parent = None
    if r["parent_id"] is not None:
        p = ws.query_one("SELECT name FROM datasets WHERE id=?", (r["parent_id"],))
        parent = p[0] if p else None
    return DatasetInfo(
        id=r["id"],
        name=r["name"],
        n_rows=r["n_rows"],
        source=r["source"],
        format=r["format"],
        mapping=json.loads(r["mapping"] or "{}"),
        stats=json.loads(r["stats"] or "{}"),
        parent_id=r["parent_id"],
        parent=parent,
        note=r["note"],
        created_at=r["created_at"],
    )


def get_dataset(ws: Workspace, dataset: str | int | DatasetInfo) -> DatasetInfo:
    """A dataset by name, id or info; NotFound names the datasets that exist."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    if isinstance(dataset, int):
        r = ws.query_one("SELECT * FROM datasets WHERE id=?", (dataset,))
    else:
        r = ws.query_one("SELECT * FROM datasets WHERE name=?", (dataset,))
    if r is None:
        raise NotFound("dataset", str(dataset), dataset_names(ws))
    return _info(ws, r)


def list_datasets(ws: Workspace) -> list[DatasetInfo]:
    rows = ws.query("SELECT * FROM datasets")
    return [_info(ws, r) for r in sorted(rows, key=lambda r: natural_key(r["name"]))]


def exists(ws: Workspace, name: str) -> bool:
    return ws.query_one("SELECT 1 FROM datasets WHERE name=?", (name,)) is not None


def _id(ws: Workspace, dataset: str | int | DatasetInfo) -> int:
    if isinstance(dataset, DatasetInfo):
        return dataset.id
    if isinstance(dataset, int):
        return dataset
    r = ws.query_one("SELECT id FROM datasets WHERE name=?", (dataset,))
    if r is None:
        raise NotFound("dataset", str(dataset), dataset_names(ws))
    return r[0]


def id_range(con: sqlite3.Connection, dataset_id: int) -> tuple[int, int] | None:
    """(first row id, last row id) of a dataset, or None when it has no rows."""
    lo = con.execute(
        "SELECT id FROM dataset_rows WHERE dataset_id=? ORDER BY idx LIMIT 1", (dataset_id,)
    ).fetchone()
    if lo is None:
        return None
    hi = con.execute(
        "SELECT id FROM dataset_rows WHERE dataset_id=? ORDER BY idx DESC LIMIT 1", (dataset_id,)
    ).fetchone()
    return lo[0], hi[0]


# -- lazy row access --------------------------------------------------------------------------


def fts_query(text: str) -> str | None:
    """A safe FTS5 query from what a person typed: every word must occur (AND); a word ending
    in '*' matches as a prefix. None when `text` has no words."""
    # runs of letters/digits, split as the unicode61 tokenizer splits them (the index keeps
    # no positions, so a quoted string must be one token)
    words = re.findall(r"[^\W_]+\*?", text or "")
    if not words:
        return None
    return " ".join(f'"{w[:-1]}"*' if w.endswith("*") else f'"{w}"' for w in words)


def count(ws: Workspace, dataset: str | int | DatasetInfo, search: str | None = None) -> int:
    """Rows in a dataset, or rows matching `search` (full text over prompt and reference)."""
    did = _id(ws, dataset)
    query = fts_query(search) if search else None
    if query is None:
        if search:  # only punctuation: nothing can match
            return 0
        r = ws.query_one("SELECT n_rows FROM datasets WHERE id=?", (did,))
        return r[0] if r else 0
    span = id_range(ws.db, did)
    if span is None:
        return 0
    r = ws.query_one(
        "SELECT count(*) FROM dataset_fts WHERE dataset_fts MATCH ? AND rowid BETWEEN ? AND ?",
        (query, *span),
    )
    return r[0]


def page(
    ws: Workspace,
    dataset: str | int | DatasetInfo,
    offset: int = 0,
    limit: int = 100,
    search: str | None = None,
) -> list[DatasetRow]:
    """Rows `offset .. offset+limit` in file order (of the matches, when `search` is given).

    Without a search this is a keyset read on `idx`, as fast at row 900,000 as at row 0.
    """
    did = _id(ws, dataset)
    if limit <= 0:
        return []
    if not search:
        rows = ws.query(
            f"SELECT {ROW_COLUMNS} FROM dataset_rows WHERE dataset_id=? AND idx>=?"
            " ORDER BY idx LIMIT ?",
            (did, max(0, offset), limit),
        )
        return [_row(r) for r in rows]
    query = fts_query(search)
    span = id_range(ws.db, did)
    if query is None or span is None:
        return []
    # FTS5 yields matches in ascending rowid (= idx) order; CROSS JOIN keeps it driving
    rows = ws.query(
        f"SELECT {ROW_COLUMNS} FROM (SELECT rowid AS rid FROM dataset_fts"
        " WHERE dataset_fts MATCH ? AND rowid BETWEEN ? AND ? LIMIT ? OFFSET ?) AS m"
        " CROSS JOIN dataset_rows ON dataset_rows.id = m.rid WHERE dataset_id=? ORDER BY id",
        (query, *span, limit, max(0, offset), did),
    )
    return [_row(r) for r in rows]


def search(
    ws: Workspace, dataset: str | int | DatasetInfo, text: str, limit: int = 100
) -> list[DatasetRow]:
    """The first `limit` rows whose prompt or reference contains every word of `text`."""
    return page(ws, dataset, 0, limit, search=text)


def get_row(ws: Workspace, dataset: str | int | DatasetInfo, idx: int) -> DatasetRow:
    did = _id(ws, dataset)
    r = ws.query_one(
        f"SELECT {ROW_COLUMNS} FROM dataset_rows WHERE dataset_id=? AND idx=?", (did, idx)
    )
    if r is None:
        raise UserError(f"dataset {get_dataset(ws, did).name!r} has no row {idx}")
    return _row(r)


def rows_by_id(ws: Workspace, row_ids: Iterable[int]) -> dict[int, DatasetRow]:
    """Rows by their id (whatever their dataset): what an evaluation or a collection item
    refers to. Ids that are gone are left out."""
    ids = sorted({int(i) for i in row_ids})
    found: dict[int, DatasetRow] = {}
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for r in ws.query(f"SELECT {ROW_COLUMNS} FROM dataset_rows WHERE id IN ({marks})", chunk):
            found[r["id"]] = _row(r)
    return found


def iter_rows(
    ws: Workspace,
    dataset: str | int | DatasetInfo,
    *,
    batch: int = 2000,
    con: sqlite3.Connection | None = None,
) -> Iterator[DatasetRow]:
    """Every row in `idx` order, read in keyset batches (memory stays flat)."""
    did = _id(ws, dataset)
    con = con or ws.db
    after = -1
    while True:
        rows = con.execute(
            f"SELECT {ROW_COLUMNS} FROM dataset_rows WHERE dataset_id=? AND idx>? ORDER BY idx LIMIT ?",
            (did, after, batch),
        ).fetchall()
        if not rows:
            return
        for r in rows:
            yield _row(r)
        after = rows[-1]["idx"]


# -- stats ------------------------------------------------------------------------------------

ROLE_INITIALS = {"s": "system", "u": "user", "a": "assistant", "t": "tool"}


def length_bucket(n: int) -> int:
    """Histogram bucket of a length: exact below 4, then 4 buckets per power of two."""
    b = n.bit_length()
    return b * 4 + ((n >> (b - 3)) & 3) if b > 2 else n


def bucket_bounds(k: int) -> tuple[int, int]:
    """(lowest, highest) length in bucket `k`."""
    if k < 4:
        return k, k
    b, sub = divmod(k, 4)
    return (4 + sub) << (b - 3), ((5 + sub) << (b - 3)) - 1


class StatsAccumulator:
    """Dataset stats gathered one row at a time: rows, roles, turns, lengths.

    A row's shape is the initials of its turns' roles ('sua': system, user, assistant) and
    whether it has a reference; `lengths` counts rows of each exact length (as many entries
    as distinct lengths, not rows), so quantiles are exact and the histogram is derived.
    The importer updates `shapes` and `lengths` inline for speed.
    """

    def __init__(self) -> None:
        self.shapes: Counter[tuple[str, bool]] = Counter()
        self.lengths: Counter[int] = Counter()

    def add(self, messages: list[dict], has_reference: bool, n_chars: int) -> None:
        self.shapes["".join(m["role"][0] for m in messages), has_reference] += 1
        self.lengths[n_chars] += 1

    def result(self, duplicates: int = 0, skipped: int = 0) -> dict[str, Any]:
        n = sum(self.shapes.values())
        roles: Counter[str] = Counter()
        turns: Counter[int] = Counter()
        with_system = with_reference = multi_turn = 0
        for (shape, has_ref), k in self.shapes.items():
            for initial in set(shape):
                roles[ROLE_INITIALS.get(initial, initial)] += k
            if has_ref:
                roles["assistant (reference)"] += k
                with_reference += k
            if shape.startswith("s"):
                with_system += k
            if shape.count("u") > 1:
                multi_turn += k
            turns[len(shape) + (1 if has_ref else 0)] += k
        buckets: Counter[int] = Counter()
        for length, k in self.lengths.items():
            buckets[length_bucket(length)] += k
        hist = [[*bucket_bounds(b), k] for b, k in sorted(buckets.items())]
        lengths = sorted(self.lengths.items())
        total = sum(length * k for length, k in lengths)
        return {
            "rows": n,
            "with_system": with_system,
            "with_reference": with_reference,
            "multi_turn": multi_turn,
            "roles": dict(sorted(roles.items())),
            "turns": {str(t): k for t, k in sorted(turns.items())},
            "chars": {
                "total": total,
                "mean": round(total / n, 1) if n else 0,
                "min": lengths[0][0] if lengths else 0,
                "p50": quantile(lengths, 0.5),
                "p90": quantile(lengths, 0.9),
                "p99": quantile(lengths, 0.99),
                "max": lengths[-1][0] if lengths else 0,
                "exact": True,  # quantiles of stats stored before 0.2 are bucket bounds
            },
            "approx_tokens": round(total / 4),
            "length_histogram": hist,
            "duplicates": duplicates,
            "skipped": skipped,
        }


def quantile(counts: list[tuple[int, int]], q: float) -> int:
    """The q-quantile of values given as sorted (value, count) pairs: the smallest value
    that at least q of them do not exceed (nearest rank; numpy's "inverted_cdf").

    The stats used to take the upper bound of the histogram bucket holding the quantile,
    so p50/p90/p99 of lengths 150-190 all read 191 (one bucket spans 160-191).
    """
    n = sum(k for _, k in counts)
    if not n:
        return 0
    rank, seen = max(1, math.ceil(q * n - 1e-9)), 0
    for value, k in counts:
        seen += k
        if seen >= rank:
            return value
    return counts[-1][0]


def scan_stats(con: sqlite3.Connection, dataset_id: int, duplicates: int, skipped: int = 0) -> dict:
    """Stats of a stored dataset, by one pass over its rows."""
    acc = StatsAccumulator()
    cur = con.execute(
        "SELECT messages, reference IS NOT NULL, n_chars FROM dataset_rows WHERE dataset_id=?",
        (dataset_id,),
    )
    while True:
        rows = cur.fetchmany(5000)
        if not rows:
            break
        for messages, has_ref, n_chars in rows:
            acc.add(json.loads(messages), bool(has_ref), n_chars)
    return acc.result(duplicates, skipped)


def count_duplicates(con: sqlite3.Connection, dataset_id: int) -> int:
    r = con.execute(
        "SELECT count(*) - count(DISTINCT row_hash) FROM dataset_rows WHERE dataset_id=?",
        (dataset_id,),
    ).fetchone()
    return r[0] or 0


def index_rows(con: sqlite3.Connection, dataset_id: int) -> None:
    """Add a dataset's rows to the full-text index (one bulk insert, after the rows)."""
    con.execute(
        "INSERT INTO dataset_fts(rowid, prompt, reference)"
        " SELECT id, prompt, reference FROM dataset_rows WHERE dataset_id=? ORDER BY id",
        (dataset_id,),
    )


def stats(ws: Workspace, dataset: str | int | DatasetInfo) -> dict[str, Any]:
    """Rows, approximate tokens (chars/4), length distribution, roles present, duplicates."""
    return get_dataset(ws, dataset).stats


# -- versions ---------------------------------------------------------------------------------


def check_new_name(con: sqlite3.Connection, name: str) -> None:
    from kdstudio.config import check_name

    check_name("dataset", name)
    if con.execute("SELECT 1 FROM datasets WHERE name=?", (name,)).fetchone():
        raise UserError(
            f"a dataset named {name!r} already exists (choose another name, e.g. --name {name}-2, "
            f"or remove it first with `kdstudio data remove {name}`)"
        )


def apply_edit(row: DatasetRow, edit: dict[str, Any]) -> tuple:
    """(messages, prompt, system, reference) of `row` with `edit` applied.

    `edit` may set `prompt` (the last user turn), `system` (None removes it), `reference`
    (None removes it) or `messages` (all prompt turns; prompt and system follow from them).
    """
    unknown = set(edit) - {"prompt", "system", "reference", "messages"}
    if unknown:
        raise UserError(
            f"row {row.idx}: cannot edit {', '.join(sorted(unknown))} (editable: prompt, system, reference, messages)"
        )
    messages = [dict(m) for m in edit.get("messages", row.messages)]
    if "prompt" in edit:
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            messages.append({"role": "user", "content": edit["prompt"]})
        else:
            messages[last_user]["content"] = edit["prompt"]
    if "system" in edit:
        if messages and messages[0]["role"] == "system":
            messages = messages[1:]
        if edit["system"]:
            messages.insert(0, {"role": "system", "content": edit["system"]})
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not str(prompt).strip():
        raise UserError(f"row {row.idx}: the edit leaves an empty prompt")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    reference = edit.get("reference", row.reference)
    return messages, prompt, system, reference


def derive(
    ws: Workspace,
    parent: str | int | DatasetInfo,
    name: str,
    *,
    keep: Iterable[int] | None = None,
    drop: Iterable[int] | None = None,
    search: str | None = None,
    predicate: Callable[[DatasetRow], bool] | None = None,
    edits: dict[int, dict[str, Any]] | None = None,
    dedupe: bool = False,
    note: str | None = None,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
) -> DatasetInfo:
    """A new dataset made from `parent`'s rows, linked to it (the parent is not changed).

    Rows are kept when their idx is in `keep` (all when None), not in `drop`, they match
    `search` (full text) and `predicate(row)` is true. `edits` maps a parent idx to changes
    (see `apply_edit`). `dedupe` keeps the first of identical rows. One transaction.
    """
    sink = sink or NullSink()
    src = get_dataset(ws, parent)
    t0 = time.time()
    with ws.tx() as con:
        check_new_name(con, name)
        where, params = ["r.dataset_id=?"], [src.id]
        for ids, op in ((keep, "IN"), (drop, "NOT IN")):
            if ids is not None:
                table = f"kd_{'keep' if op == 'IN' else 'drop'}"
                con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}(idx INTEGER PRIMARY KEY)")
                con.execute(f"DELETE FROM {table}")
                con.executemany(
                    f"INSERT OR IGNORE INTO {table} VALUES (?)", ((int(i),) for i in ids)
                )
                where.append(f"r.idx {op} (SELECT idx FROM temp.{table})")
        if search:
            query, span = fts_query(search), id_range(con, src.id)
            if query is None or span is None:
                where.append("0")
            else:
                where.append(
                    "r.id IN (SELECT rowid FROM dataset_fts WHERE dataset_fts MATCH ?"
                    " AND rowid BETWEEN ? AND ?)"
                )
                params += [query, *span]
        mapping = {"parent": src.name}
        if search:
            mapping["search"] = search
        now = time.time()
        did = con.execute(
            "INSERT INTO datasets(name, parent_id, source, format, mapping, note, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (name, src.id, f"derived from {src.name}", src.format, json.dumps(mapping), note, now),
        ).lastrowid
        cond = " AND ".join(where)
        if predicate is None and not edits:
            con.execute(
                "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, system, reference,"
                " row_key, meta, n_chars, row_hash) SELECT ?, row_number() OVER (ORDER BY r.idx) - 1,"
                " messages, prompt, system, reference, row_key, meta, n_chars, row_hash"
                f" FROM dataset_rows r WHERE {cond} ORDER BY r.idx",
                (did, *params),
            )
        else:
            _derive_rows(con, src, did, cond, params, predicate, edits or {}, sink, cancel)
        if cancel is not None:
            cancel.raise_if_cancelled()
        index_rows(con, did)
        if dedupe:
            remove_duplicates(con, did)
        duplicates = count_duplicates(con, did)
        doc = scan_stats(con, did, duplicates)
        if doc["rows"] == 0:
            raise UserError(f"no row of {src.name!r} is left by this filter; nothing was made")
        con.execute(
            "UPDATE datasets SET n_rows=?, stats=? WHERE id=?", (doc["rows"], json.dumps(doc), did)
        )
    info = get_dataset(ws, did)
    sink.emit(Finished(f"dataset {name!r}: {info.n_rows} rows from {src.name!r} ({duration(time.time() - t0)})",
                       summary={"dataset": name, "rows": info.n_rows, "parent": src.name}))  # fmt: skip
    return info


def _derive_rows(con, src, did, cond, params, predicate, edits, sink, cancel) -> None:
    after, idx, batch = -1, 0, []
    while True:
        rows = con.execute(
            f"SELECT {ROW_COLUMNS}, row_hash FROM dataset_rows r WHERE {cond} AND r.idx>?"
            " ORDER BY r.idx LIMIT 2000",
            (*params, after),
        ).fetchall()
        if not rows:
            break
        after = rows[-1]["idx"]
        for r in rows:
            row = _row(r)
            if predicate is not None and not predicate(row):
                continue
            if row.idx in edits:
                messages, prompt, system, reference = apply_edit(row, edits[row.idx])
                mj = encode_json(messages)
                n_chars = sum(len(m["content"]) for m in messages) + len(reference or "")
                batch.append((did, idx, mj, prompt, system, reference, row.row_key, r["meta"],
                              n_chars, row_hash(mj, reference)))  # fmt: skip
            else:
                batch.append((did, idx, r["messages"], r["prompt"], r["system"], r["reference"],
                              r["row_key"], r["meta"], r["n_chars"], r["row_hash"]))  # fmt: skip
            idx += 1
        con.executemany(INSERT_ROW, batch)
        batch.clear()
        sink.emit(Progress(idx, src.n_rows, "row", f"deriving from {src.name}"))
        if cancel is not None:
            cancel.raise_if_cancelled()


def remove_duplicates(con: sqlite3.Connection, dataset_id: int) -> int:
    """Delete all but the first of identical rows, renumber `idx` densely; returns removed."""
    con.execute("CREATE TEMP TABLE IF NOT EXISTS kd_dupes(id INTEGER PRIMARY KEY)")
    con.execute("DELETE FROM kd_dupes")
    con.execute(
        "INSERT INTO kd_dupes SELECT id FROM (SELECT id, row_number() OVER"
        " (PARTITION BY row_hash, messages, reference ORDER BY idx) AS k FROM dataset_rows"
        " WHERE dataset_id=?)"
        " WHERE k > 1",
        (dataset_id,),
    )
    removed = con.execute("SELECT count(*) FROM kd_dupes").fetchone()[0]
    if removed:
        con.execute("DELETE FROM dataset_rows WHERE id IN (SELECT id FROM kd_dupes)")
        # two passes: the UNIQUE (dataset_id, idx) must hold after every single row update
        con.execute("UPDATE dataset_rows SET idx=-1-idx WHERE dataset_id=?", (dataset_id,))
        con.execute(
            "UPDATE dataset_rows SET idx=n.k FROM (SELECT id, row_number() OVER (ORDER BY id) - 1"
            " AS k FROM dataset_rows WHERE dataset_id=?) AS n WHERE dataset_rows.id=n.id",
            (dataset_id,),
        )
    con.execute("DELETE FROM kd_dupes")
    return removed


def delete_dataset(ws: Workspace, dataset: str | int | DatasetInfo) -> None:
    """Remove a dataset and its rows. Refused while a collection or a derived dataset uses it."""
    info = get_dataset(ws, dataset)
    with ws.tx() as con:
        users = [
            r[0] for r in con.execute("SELECT name FROM collections WHERE dataset_id=?", (info.id,))
        ]
        if users:
            raise UserError(
                f"dataset {info.name!r} is used by collection(s) {', '.join(map(repr, users))}; "
                "remove those first"
            )
        children = [
            r[0] for r in con.execute("SELECT name FROM datasets WHERE parent_id=?", (info.id,))
        ]
        if children:
            raise UserError(
                f"dataset {info.name!r} has derived versions {', '.join(map(repr, children))}; "
                "remove those first"
            )
        # the dataset_rows_fts_delete trigger takes the rows out of the full-text index
        con.execute("DELETE FROM dataset_rows WHERE dataset_id=?", (info.id,))
        con.execute("DELETE FROM datasets WHERE id=?", (info.id,))
