"""Export a dataset: OpenAI chat JSONL, ShareGPT, Alpaca, kdstudio JSONL, Parquet, CSV, or a
Hugging Face `datasets` folder (`hf`: what `datasets.load_from_disk` reads).

Rows are streamed in keyset batches and written to a temporary file (or folder) that
replaces `out` only when complete, so a failed or cancelled export never leaves half a
file. Importing an export gives the same rows back (messages, prompt, system, reference;
`jsonl`, `parquet`, `csv` and `hf` also keep the row id and the file's other fields).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdstudio.data import store
from kdstudio.data.store import DatasetRow
from kdstudio.errors import UserError
from kdstudio.events import CancelToken, Finished, NullSink, Progress, Sink

if TYPE_CHECKING:
    from kdstudio.workspace import Workspace

EXPORT_FORMATS = ("openai-chat", "sharegpt", "alpaca", "jsonl", "parquet", "csv", "hf")
HF_SHARD_BYTES = 500 << 20  # datasets' own default shard size for save_to_disk
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
BATCH = 5000


@dataclass(frozen=True)
class ExportResult:
    path: str
    n_rows: int
    format: str


def format_for(out: Path) -> str:
    """The export format a file name implies (used when none is given)."""
    ext = out.suffix.lower()
    return {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}.get(ext, "jsonl")


def export_dataset(
    ws: Workspace,
    name: str,
    out: str | Path,
    fmt: str | None = None,
    *,
    sink: Sink | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    """Write dataset `name` to `out` in `fmt` (one of EXPORT_FORMATS; None: from the suffix).

    ShareGPT and Alpaca are written as one JSON array when `out` ends in .json, else as JSONL.
    `hf` writes a folder (`out` must not exist, or be an empty folder).
    """
    sink, cancel = sink or NullSink(), cancel or CancelToken()
    out = Path(out).expanduser()
    fmt = (fmt or format_for(out)).lower()
    if fmt not in EXPORT_FORMATS:
        raise UserError(
            f"unknown export format {fmt!r} (choose one of: {', '.join(EXPORT_FORMATS)})"
        )
    info = store.get_dataset(ws, name)
    if fmt == "hf":
        _check_new_folder(out)
    elif out.is_dir():
        raise UserError(f"{out} is a folder; give a file name, e.g. {out / (info.name + '.jsonl')}")
    if not out.parent.exists():
        raise UserError(f"the folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows = _progress_rows(store.iter_rows(ws, info, batch=BATCH), info.n_rows, sink, cancel)
    try:
        if fmt == "hf":
            n = _write_hf(tmp, rows, info.name)
        elif fmt == "parquet":
            n = _write_parquet(tmp, rows)
        elif fmt == "csv":
            n = _write_csv(tmp, rows)
        else:
            to_record = {"openai-chat": openai_record, "sharegpt": sharegpt_record,
                         "alpaca": alpaca_record, "jsonl": jsonl_record}[fmt]  # fmt: skip
            as_array = fmt in ("sharegpt", "alpaca") and out.suffix.lower() == ".json"
            n = _write_json(tmp, (to_record(r) for r in rows), as_array)
        if fmt == "hf" and out.is_dir():
            out.rmdir()  # the empty folder the user named: the complete one takes its place
        os.replace(tmp, out)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    sink.emit(Finished(f"exported {n:,} rows of {info.name!r} to {out} ({fmt})",
                       summary={"dataset": info.name, "rows": n, "path": str(out), "format": fmt}))  # fmt: skip
    return ExportResult(str(out), n, fmt)


def _progress_rows(rows: Iterator[DatasetRow], total: int, sink: Sink, cancel: CancelToken):
    for i, row in enumerate(rows, 1):
        yield row
        if i % BATCH == 0:
            cancel.raise_if_cancelled()
            sink.emit(Progress(i, total, "row", "exporting"))


# -- one record per row -------------------------------------------------------------------


def _full_turns(row: DatasetRow) -> list[dict[str, str]]:
    turns = [{"role": m["role"], "content": m["content"]} for m in row.messages]
    if row.reference is not None:
        turns.append({"role": "assistant", "content": row.reference})
    return turns


def openai_record(row: DatasetRow) -> dict[str, Any]:
    """Only `messages`: what OpenAI's chat fine-tuning accepts."""
    return {"messages": _full_turns(row)}


def sharegpt_record(row: DatasetRow) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    if row.row_key is not None:
        rec["id"] = row.row_key
    rec["conversations"] = [
        {"from": SHAREGPT_FROM[t["role"]], "value": t["content"]} for t in _full_turns(row)
    ]
    return rec


def alpaca_record(row: DatasetRow) -> dict[str, Any]:
    """instruction = the prompt, output = the reference, earlier turns as `history` pairs."""
    turns = list(row.messages)
    system = None
    if turns and turns[0]["role"] == "system":
        system = turns.pop(0)["content"]
    history = []
    for i in range(0, len(turns) - 1, 2):
        user, answer = turns[i], turns[i + 1]
        if user["role"] != "user" or answer["role"] != "assistant":
            raise UserError(
                f"row {row.idx} has turns Alpaca cannot hold (roles "
                f"{', '.join(t['role'] for t in row.messages)}); export as openai-chat or jsonl"
            )
        history.append([user["content"], answer["content"]])
    if not turns or len(turns) % 2 == 0 or turns[-1]["role"] != "user":
        raise UserError(
            f"row {row.idx} does not end with a user turn; export as openai-chat or jsonl"
        )
    rec: dict[str, Any] = {}
    if row.row_key is not None:
        rec["id"] = row.row_key
    rec.update(instruction=row.prompt, input="", output=row.reference or "")
    if system is not None:
        rec["system"] = system
    if history:
        rec["history"] = history
    return rec


def jsonl_record(row: DatasetRow) -> dict[str, Any]:
    """kdstudio's own JSONL: lossless (id, prompt turns, reference, other fields)."""
    rec: dict[str, Any] = {}
    if row.row_key is not None:
        rec["id"] = row.row_key
    rec["messages"] = row.messages
    if row.reference is not None:
        rec["reference"] = row.reference
    if row.meta:
        rec["meta"] = row.meta
    return rec


# -- writers ----------------------------------------------------------------------------------


def _write_json(path: Path, records: Iterator[dict], as_array: bool) -> int:
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        if as_array:
            f.write("[")
        for rec in records:
            text = json.dumps(rec, ensure_ascii=False, default=str)
            if as_array:
                f.write(("\n" if not n else ",\n") + text)
            else:
                f.write(text + "\n")
            n += 1
        if as_array:
            f.write("\n]\n")
    return n


CSV_COLUMNS = ["id", "system", "prompt", "reference", "messages", "meta"]


def _write_csv(path: Path, rows: Iterator[DatasetRow]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([
                r.row_key or "", r.system or "", r.prompt, r.reference if r.reference is not None else "",
                json.dumps(r.messages, ensure_ascii=False),
                json.dumps(r.meta, ensure_ascii=False, default=str) if r.meta else "",
            ])  # fmt: skip
            n += 1
    return n


def _arrow_schema() -> Any:
    import pyarrow as pa

    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("id", pa.string()), ("messages", pa.list_(turn)), ("prompt", pa.string()),
        ("system", pa.string()), ("reference", pa.string()), ("meta", pa.string()),
    ])  # fmt: skip


def _arrow_tables(rows: Iterator[DatasetRow], schema: Any) -> Iterator[Any]:
    """The rows as Arrow tables of up to BATCH * 4 rows (at least one table, maybe empty)."""
    import pyarrow as pa

    cols: dict[str, list] = {f.name: [] for f in schema}
    n = 0
    for r in rows:
        cols["id"].append(r.row_key)
        cols["messages"].append(r.messages)
        cols["prompt"].append(r.prompt)
        cols["system"].append(r.system)
        cols["reference"].append(r.reference)
        cols["meta"].append(json.dumps(r.meta, ensure_ascii=False, default=str) if r.meta else None)
        n += 1
        if len(cols["id"]) >= BATCH * 4:
            yield pa.table(cols, schema=schema)
            for v in cols.values():
                v.clear()
    if cols["id"] or n == 0:
        yield pa.table(cols, schema=schema)


def _write_parquet(path: Path, rows: Iterator[DatasetRow]) -> int:
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for table in _arrow_tables(rows, schema):
            writer.write_table(table)
            n += table.num_rows
    return n


def _check_new_folder(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UserError(f"{out} already exists; give a new folder for the Hugging Face dataset")


def _write_hf(folder: Path, rows: Iterator[DatasetRow], name: str) -> int:
    """A `Dataset.save_to_disk` folder: Arrow stream shards, state.json, dataset_info.json.
    The features are left to `datasets` to read from the Arrow schema (every version can)."""
    import pyarrow as pa

    folder.mkdir()
    schema = _arrow_schema()
    shards: list[Path] = []
    writer, written, n = None, 0, 0
    digest = hashlib.blake2b(name.encode(), digest_size=8)
    try:
        for table in _arrow_tables(rows, schema):
            if writer is None or written >= HF_SHARD_BYTES:
                if writer is not None:
                    writer.close()
                shards.append(folder / f"shard-{len(shards):05d}.arrow")
                writer, written = pa.ipc.new_stream(str(shards[-1]), schema), 0
            writer.write_table(table)
            written += table.nbytes
            n += table.num_rows
            digest.update(str(table.num_rows).encode())
    finally:
        if writer is not None:
            writer.close()
    files = []
    for i, shard in enumerate(shards):  # datasets' names: data-00000-of-00002.arrow ...
        final = shard.with_name(f"data-{i:05d}-of-{len(shards):05d}.arrow")
        shard.rename(final)
        files.append({"filename": final.name})
    state = {
        "_data_files": files,
        "_fingerprint": digest.hexdigest(),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = {"citation": "", "description": f"kdstudio dataset {name!r}", "homepage": "",
            "license": ""}  # fmt: skip
    (folder / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return n
