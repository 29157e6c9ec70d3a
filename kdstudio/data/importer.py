"""The import job: a file in any accepted shape becomes one immutable dataset.

Streaming end to end (one record in memory at a time, rows written in large
`executemany` batches), all in one transaction: the dataset is complete or absent. The
full-text index is built in one bulk insert after the rows, stats are gathered as rows go by.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from json.encoder import encode_basestring  # the C version when available
from pathlib import Path
from typing import Any

from kdstudio.data import store
from kdstudio.data.readers import (
    CONTAINERS,
    HUB_PREFIX,
    MAX_ROW_BYTES,
    Bad,
    DataError,
    excerpt,
    is_hf_folder,
    is_hub_id,
    open_reader,
)
from kdstudio.data.schema import SCHEMAS, RowError, Schema, converter, detect, normalize_mapping
from kdstudio.errors import UserError
from kdstudio.events import CancelToken, Finished, Log, NullSink, Progress, Sink, Warning
from kdstudio.formatting import duration
from kdstudio.workspace import Workspace

FORMATS = ("auto", *CONTAINERS, *SCHEMAS[:3])
BATCH = 10_000  # rows per executemany
QUEUE = 3  # batches converted ahead of the writer (bounds memory)
FTS_EVERY = 100_000  # rows added to the search index at once (bigger = less merging)
CACHE_KB = 16384  # the writer's page cache: bounded memory, fewer spills
PEEK = 200  # records looked at to detect the schema
SHOWN_SKIPS = 20  # skipped lines reported one by one; the rest are summed up

SCHEMA_WORDS = {
    "openai-chat": "OpenAI chat (messages with role/content turns)",
    "sharegpt": "ShareGPT (conversations with from/value turns)",
    "alpaca": "Alpaca (instruction/input/output)",
    "table": "a table with a prompt column",
}


@dataclass
class ImportResult:
    """What an import made. `skipped` lists (line, reason) of every bad line left out."""

    dataset_id: int
    name: str
    n_rows: int
    detected_format: str
    file_format: str
    columns: dict[str, str]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    removed_duplicates: int = 0
    n_references: int = 0
    collection_id: int | None = None
    collection: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line a person reads after the import."""
        text = (
            f"imported {plural(self.n_rows, 'row')} into dataset {self.name!r} "
            f"({file_words(self.file_format)}, {SCHEMA_WORDS.get(self.detected_format, self.detected_format)}"
            f"; {self.n_references:,} with a reference answer) in {duration(self.seconds)}"
        )
        if self.removed_duplicates:
            text += f"; removed {plural(self.removed_duplicates, 'duplicate row')}"
        if self.collection:
            text += f"; answers stored in collection {self.collection!r}"
        return text

    def describe_skipped(self) -> str:
        """'skipped 3 bad lines: lines 3, 7-9' ('' when none was skipped)."""
        if not self.skipped:
            return ""
        unit = "row" if self.file_format in ("parquet", "hf") else "line"
        return (
            f"skipped {plural(len(self.skipped), 'bad ' + unit)}: "
            f"{skipped_summary(self.skipped, unit)}"
        )


def file_words(kind: str) -> str:
    """'JSONL', 'CSV' ... or 'Hugging Face dataset' for a reader's kind."""
    return "Hugging Face dataset" if kind == "hf" else kind.upper()


def plural(n: int, noun: str) -> str:
    """'1 row', '2 rows', '1,000 rows'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def default_name(path: Path | str, split: str | None = None) -> str:
    """A dataset name from a file name: 'My Prompts (v2).jsonl' -> 'My-Prompts-v2'; from a
    saved folder or a Hub id and its split: 'hf://datasets/org/squad' + 'train' -> 'squad-train'."""
    if is_hub_id(path):
        stem = str(path).rstrip("/").rsplit("/", 1)[-1]
    else:
        path = Path(path)
        stem = path.name.split(".")[0] if not path.name.startswith(".") else path.stem
        if path.is_dir():
            stem = path.name
    if split:
        stem = f"{stem}-{split}"
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", stem).strip("-._")
    return (name or "dataset")[:64]


def split_format(fmt: str) -> tuple[str | None, str | None]:
    """(file format or None, row schema or None) from an import's `fmt` ('auto', 'csv', 'alpaca' ...)."""
    fmt = (fmt or "auto").strip().lower()
    if fmt == "auto":
        return None, None
    if fmt in CONTAINERS:
        return fmt, None
    if fmt in SCHEMAS:
        return None, fmt
    raise UserError(f"unknown --format {fmt!r} (choose one of: {', '.join(FORMATS)})")


def import_dataset(
    ws: Workspace,
    path: str | Path,
    *,
    name: str | None = None,
    fmt: str = "auto",
    split: str | None = None,
    revision: str | None = None,
    mapping: dict[str, str] | None = None,
    skip_bad: bool = False,
    dedupe: bool = False,
    as_collection: str | None = None,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
    note: str | None = None,
) -> ImportResult:
    """Import a JSONL/JSON/CSV/TSV/Parquet file, a Hugging Face `datasets` folder
    (`save_to_disk`) or a Hub dataset (`hf://datasets/ORG/NAME`) as a new dataset (one
    transaction).

    `fmt` is 'auto', a file format (jsonl, json, csv, tsv, parquet, hf) or a row schema
    (openai-chat, sharegpt, alpaca); `mapping` overrides columns as {field: column}.
    `split` picks a split of a `DatasetDict` folder or a Hub dataset (needed when there
    are several); `revision` a Hub dataset's branch, tag or commit.
    Bad input raises DataError (a UserError) naming the file, the line and an excerpt;
    with `skip_bad` such lines are left out and listed in `ImportResult.skipped`.
    `dedupe` keeps only the first of identical rows (same turns and reference).
    `as_collection` also stores each row's reference answer as a done item of a new
    collection of that name (source 'import'), so answers gathered elsewhere need no teacher.
    Cancelling (or any error) leaves no trace: the transaction is rolled back.

    The file is read and converted on the calling thread while a writer thread (with its
    own connection) inserts the rows and indexes them, so the two overlap.
    """
    t0 = time.time()
    sink = sink or NullSink()
    cancel = cancel or CancelToken()
    if ws.db.in_transaction:
        raise RuntimeError("import_dataset commits on its own: do not call it inside ws.tx()")
    hub = is_hub_id(path)
    path = str(path) if hub else Path(path).expanduser()
    container, forced = split_format(fmt)
    if not hub:
        _check_file(path)
    name = name or default_name(path, split)
    store.check_new_name(ws.db, name)
    if as_collection:
        _check_new_collection(ws, as_collection)
    columns_map = normalize_mapping(mapping)

    reader = open_reader(path, container, max_row_bytes, split=split, revision=revision)
    label = reader.label
    items = iter(reader)
    head = _peek(items, skip_bad)
    records = [rec for _, rec in head if type(rec) is dict]
    if not head:
        raise DataError(path, None, "has no rows (only blank lines or a header)", label=label)
    if not records:
        line, bad = head[0]
        if skip_bad:
            raise DataError(
                path, None, f"has no good row in its first {plural(len(head), reader.unit)} "
                f"({reader.unit} {line}: {bad.reason}); is it the right file and format?",
                label=label,
            )  # fmt: skip
        raise DataError(path, line, bad.reason, bad.excerpt, unit=reader.unit, label=label)
    try:
        schema = detect(records, columns_map, forced)
    except UserError as exc:
        raise UserError(f"{label}: {exc}") from None
    del records
    sink.emit(Log(f"{label}: {file_words(reader.kind)}, {SCHEMA_WORDS[schema.name]}; "
                  f"columns: {', '.join(f'{f}={c!r}' for f, c in schema.columns.items())}"))  # fmt: skip

    result = ImportResult(0, name, 0, schema.name, reader.kind, dict(schema.columns))
    dataset_row = (
        name,
        reader.source,
        f"{reader.kind}:{schema.name}",
        json.dumps(schema.columns),
        note,
    )
    writer = _Writer(ws, dataset_row, dedupe=dedupe, as_collection=as_collection)
    writer.start()
    try:
        result.dataset_id = writer.wait_ready()
        acc = _convert_rows(
            writer, chain(head, items), reader, schema, skip_bad, result, sink, cancel
        )
        del head
        if result.n_rows == 0:
            raise DataError(
                path, None, f"no row could be imported ({len(result.skipped)} bad lines skipped)",
                label=label,
            )  # fmt: skip
        sink.emit(Log(f"read {plural(result.n_rows, 'row')}; finishing the search index and stats"))
        writer.finish(acc, result)
    except BaseException:
        writer.abort()
        raise
    result.seconds = time.time() - t0
    _report(result, sink)
    return result


_split_format = split_format  # the name the import panel's preview uses

_DONE, _ABORT = object(), object()


class _Writer(threading.Thread):
    """Owns the import's transaction: inserts batches, indexes them, then finishes the
    dataset (duplicates, stats, the optional collection) and commits, or rolls back."""

    def __init__(
        self, ws: Workspace, dataset_row: tuple, *, dedupe: bool, as_collection: str | None
    ):
        super().__init__(name="kdstudio-import-writer", daemon=True)
        self.ws, self.dataset_row = ws, dataset_row
        self.dedupe, self.as_collection = dedupe, as_collection
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.ready = threading.Event()
        self.dataset_id = 0
        self.error: BaseException | None = None
        self.final: tuple | None = None  # (acc, result) handed over by finish()

    # -- called from the importing thread ------------------------------------------------
    def wait_ready(self) -> int:
        self.ready.wait()
        self._raise_error()
        return self.dataset_id

    def put(self, batch: list[tuple]) -> None:
        while True:
            self._raise_error()
            try:
                self.queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self, acc: store.StatsAccumulator, result: ImportResult) -> None:
        self.final = (acc, result)
        self.put(_DONE)
        self.join()
        self._raise_error()

    def abort(self) -> None:
        if self.is_alive():
            while self.is_alive():
                try:
                    self.queue.put(_ABORT, timeout=0.2)
                    break
                except queue.Full:
                    continue
            self.join()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error
        if self.ready.is_set() and not self.is_alive() and self.final is None:
            raise RuntimeError("the import writer stopped unexpectedly")

    # -- the writer thread -----------------------------------------------------------------
    def run(self) -> None:
        con = self.ws.db  # this thread's own connection
        try:
            con.execute(f"PRAGMA cache_size=-{CACHE_KB}")  # fewer spills in a big transaction
            con.execute("BEGIN IMMEDIATE")
            try:
                store.check_new_name(con, self.dataset_row[0])
                self.dataset_id = con.execute(
                    "INSERT INTO datasets(name, source, format, mapping, note, created_at)"
                    " VALUES (?,?,?,?,?,?)",
                    (*self.dataset_row, time.time()),
                ).lastrowid
                self.ready.set()
                if self._write(con):
                    self._complete(con)
                    con.execute("COMMIT")
                else:
                    con.execute("ROLLBACK")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except BaseException as exc:  # noqa: BLE001 - handed to the importing thread
            self.error = exc
        finally:
            self.ready.set()
            self.ws.release_thread()  # this thread's connection (the job ends here)

    def _write(self, con: sqlite3.Connection) -> bool:
        """Insert batches, indexing every FTS_EVERY rows, until done (True) or aborted (False)."""
        did = self.dataset_id
        unindexed_from, unindexed = None, 0  # first idx not yet in the index, and how many
        while True:
            batch = self.queue.get()
            if batch is _ABORT:
                return False
            if batch is _DONE:
                if unindexed:
                    self._index(con, did, unindexed_from)
                return True
            con.executemany(store.INSERT_ROW, batch)
            if not unindexed:
                unindexed_from = batch[0][1]
            unindexed += len(batch)
            if unindexed >= FTS_EVERY:
                self._index(con, did, unindexed_from)
                unindexed = 0

    @staticmethod
    def _index(con: sqlite3.Connection, did: int, from_idx: int) -> None:
        first = con.execute(
            "SELECT id FROM dataset_rows WHERE dataset_id=? AND idx=?", (did, from_idx)
        ).fetchone()[0]
        con.execute(
            "INSERT INTO dataset_fts(rowid, prompt, reference)"
            " SELECT id, prompt, reference FROM dataset_rows WHERE id>=? ORDER BY id",
            (first,),
        )

    def _complete(self, con: sqlite3.Connection) -> None:
        acc, result = self.final
        did = self.dataset_id
        result.duplicates = store.count_duplicates(con, did)
        if self.dedupe and result.duplicates:
            result.removed_duplicates = store.remove_duplicates(con, did)
            result.n_rows -= result.removed_duplicates
            doc = store.scan_stats(con, did, 0, len(result.skipped))
        else:
            doc = acc.result(result.duplicates, len(result.skipped))
        result.n_references = doc["with_reference"]
        con.execute(
            "UPDATE datasets SET n_rows=?, stats=? WHERE id=?",
            (result.n_rows, json.dumps(doc), did),
        )
        if self.as_collection:
            _import_answers(self.ws, con, did, result.name, self.as_collection, result)


def _convert_rows(writer: _Writer, items, reader, schema: Schema, skip_bad, result, sink, cancel):
    """Convert every record into a row tuple and hand batches to the writer; returns stats."""
    convert = converter(schema)
    esc = encode_basestring
    encode = store.encode_json
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    limit = reader.max_row_bytes
    did = writer.dataset_id
    acc = store.StatsAccumulator()
    shapes, lengths = acc.shapes, acc.lengths
    batch: list[tuple] = []
    idx = 0
    next_progress = time.time() + 0.5

    for line, rec in items:
        if type(rec) is not dict:
            _bad(reader, line, rec, skip_bad, result, sink)
            continue
        try:
            msgs, prompt, system, reference, key, meta = convert(rec)
        except RowError as exc:
            _bad(reader, line, Bad(str(exc), excerpt(encode(rec))), skip_bad, result, sink)
            continue
        # the turns as JSON, their role initials and the row's length, in one pass
        parts, shape = [], ""
        n = 0 if reference is None else len(reference)
        for m in msgs:
            content, role = m["content"], m["role"]
            parts.append('{"role":"' + role + '","content":' + esc(content) + "}")
            shape += role[0]
            n += len(content)
        if n > limit:
            _bad(reader, line, Bad(reader._too_big(n)), skip_bad, result, sink)
            continue
        mj = "[" + ",".join(parts) + "]"
        digest = blake2b(
            (mj + "\x1e" + ("\x00" if reference is None else reference)).encode(), digest_size=8
        ).digest()
        batch.append((did, idx, mj, prompt, system, reference, key,
                      encode(meta) if meta else None, n, from_bytes(digest, "big", signed=True)))  # fmt: skip
        idx += 1
        shapes[shape, reference is not None] += 1
        lengths[n] += 1
        if len(batch) >= BATCH:
            cancel.raise_if_cancelled()
            writer.put(batch)
            batch = []
            if time.time() >= next_progress:
                next_progress = time.time() + 0.5
                _progress(reader, idx, sink)
    cancel.raise_if_cancelled()
    if batch:
        writer.put(batch)
    result.n_rows = idx
    return acc


def _check_file(path: Path) -> None:
    if not path.exists():
        if str(path).startswith("hf:/"):  # the shell or a Path squeezed hf:// to hf:/
            raise UserError(f"{path}: write a Hub dataset as {HUB_PREFIX}ORG/NAME")
        raise UserError(f"no such file: {path}")
    if path.is_dir():
        if is_hf_folder(path):
            return
        raise UserError(
            f"{path} is a folder; give a JSONL, JSON, CSV, TSV or Parquet file, or a folder "
            "written by Hugging Face datasets' save_to_disk"
        )
    if path.stat().st_size == 0:
        raise DataError(path, None, "is empty: there are no rows to import")


def _check_new_collection(ws: Workspace, name: str) -> None:
    from kdstudio.config import check_name

    check_name("collection", name)
    if ws.query_one("SELECT 1 FROM collections WHERE name=?", (name,)):
        raise UserError(f"a collection named {name!r} already exists (choose another name)")


def _peek(items: Iterator, skip_bad: bool) -> list:
    """The first records (enough to detect the schema); with skip_bad, read past bad ones."""
    head: list = []
    good = 0
    for item in items:
        head.append(item)
        if type(item[1]) is dict:
            good += 1
        elif not skip_bad and not good:
            break  # the first line is already bad: report it
        if good >= PEEK or len(head) >= PEEK * 50:
            break
    return head


def _progress(reader, rows: int, sink: Sink) -> None:
    if reader.size:
        message = f"{100.0 * reader.position / reader.size:.0f}% of the file read"
    else:  # a stream of unknown length (the Hub)
        message = f"reading {reader.label}"
    sink.emit(Progress(rows, None, "row", message, extra={}))


def _bad(reader, line: int, bad: Bad, skip_bad: bool, result: ImportResult, sink: Sink) -> None:
    if not skip_bad:
        raise DataError(
            reader.path, line, bad.reason, bad.excerpt, unit=reader.unit, label=reader.label,
            hint="fix it, or use --skip-bad to import the other rows and list the bad ones",
        )  # fmt: skip
    result.skipped.append((line, bad.reason))
    if len(result.skipped) <= SHOWN_SKIPS:
        sink.emit(Warning(f"skipped: {bad.reason}", where=f"{reader.label}, {reader.unit} {line}"))


def _import_answers(ws, con, did: int, name: str, collection: str, result: ImportResult) -> None:
    """Store each row's reference answer as a done item of a new collection (source 'import')."""
    from kdstudio.collect.store import add_imported_response, create_collection

    if result.n_references == 0:
        raise UserError(
            f"no row of {name!r} carries an answer, so there is nothing to store in collection "
            f"{collection!r} (import without --as-collection, then collect answers from a teacher)"
        )
    cid = create_collection(
        ws, collection, dataset_id=did, teacher_name=None, params={}, source="import"
    )
    cur = con.execute(
        "SELECT id, idx, reference FROM dataset_rows WHERE dataset_id=? AND reference IS NOT NULL ORDER BY idx",
        (did,),
    )
    while True:
        rows = cur.fetchmany(2000)
        if not rows:
            break
        for row_id, idx, text in rows:
            add_imported_response(ws, cid, dataset_name=name, row_id=row_id, idx=idx, text=text)
    con.execute("UPDATE collections SET status='done', updated_at=? WHERE id=?", (time.time(), cid))
    result.collection_id, result.collection = cid, collection


def _report(result: ImportResult, sink: Sink) -> None:
    if len(result.skipped) > SHOWN_SKIPS:
        sink.emit(Warning(f"skipped {len(result.skipped):,} bad lines in all "
                          f"({len(result.skipped) - SHOWN_SKIPS:,} more than shown)"))  # fmt: skip
    if result.duplicates and not result.removed_duplicates:
        sink.emit(
            Warning(f"{result.duplicates:,} rows repeat an earlier row (use --dedupe to drop them)")
        )
    sink.emit(Finished(result.describe(), summary={
        "dataset": result.name, "rows": result.n_rows, "format": result.detected_format,
        "skipped": len(result.skipped), "duplicates": result.duplicates,
    }))  # fmt: skip


def skipped_summary(skipped: list[tuple[int, str]], unit: str = "line") -> str:
    """'lines 3, 7-9, 12' for a list of (line, reason)."""
    lines = sorted(line for line, _ in skipped)
    ranges: list[str] = []
    start = prev = None
    for n in lines:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
    return f"{unit}{'s' if len(lines) != 1 else ''} {', '.join(ranges)}"


def reasons(skipped: list[tuple[int, str]]) -> Counter[str]:
    """How many skipped lines each reason accounts for."""
    return Counter(reason for _, reason in skipped)
