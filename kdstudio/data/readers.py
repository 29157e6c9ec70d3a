"""Streaming readers for the sources an import accepts: JSONL, JSON, CSV/TSV and Parquet
files, a Hugging Face `datasets` folder (`save_to_disk`) and a Hub dataset (`hf://datasets/`).

Each reader yields `(line, record)` pairs one at a time (memory stays flat in the file
size), where `record` is a dict, or a `Bad` saying why that line could not be read so the
importer can stop with the line, or skip it under `--skip-bad`. Errors that make the rest
of the file unreadable (a broken JSON array, a damaged Parquet file) raise `DataError`.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdstudio.errors import UserError

CONTAINERS = ("jsonl", "json", "csv", "tsv", "parquet", "hf")
HUB_PREFIX = "hf://datasets/"  # a Hub dataset: hf://datasets/ORG/NAME
MAX_ROW_BYTES = 1 << 20  # a row (one JSONL line, one CSV record) larger than this is refused
EXCERPT = 70


class DataError(UserError):
    """Bad input in a file: the message names the file, the line and shows an excerpt."""

    def __init__(self, path: Path | str, line: int | None, reason: str, excerpt: str = "", *,
                 unit: str = "line", hint: str = "", label: str | None = None) -> None:  # fmt: skip
        label = label or Path(path).name
        where = f"{label}, {unit} {line}" if line else label
        text = f"{where}: {reason}"
        if excerpt:
            text += f": {excerpt}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.path, self.line, self.reason, self.excerpt = str(path), line, reason, excerpt


@dataclass(frozen=True)
class Bad:
    """A line that could not be read as a record: why, and a short excerpt of it."""

    reason: str
    excerpt: str = ""


def excerpt(text: str | bytes, limit: int = EXCERPT) -> str:
    """A one-line, shortened, printable excerpt of `text`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _around(text: str, pos: int, width: int = EXCERPT) -> str:
    """An excerpt of a long line centred near `pos` (where a parse error is)."""
    start = max(0, pos - width // 2)
    snippet = excerpt(text[start : start + width], width)
    return ("…" if start else "") + snippet


def _json_reason(exc: json.JSONDecodeError) -> str:
    """The json module's message, in words a person fixing the file can act on."""
    msg = exc.msg.removesuffix(" starting at").removesuffix(" at")
    rest = exc.doc[exc.pos :] if isinstance(exc.doc, str) else ""
    if msg.startswith("Unterminated string") or (
        msg.startswith("Invalid control character") and rest[:1] in ("\n", "\r")
    ):
        msg = "a string is not closed (a '\"' is missing)"
    return f"not valid JSON: {msg} at column {exc.colno}"


def _utf8_reason(exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at byte {exc.start + 1})"


class Reader:
    """Base class: `kind`, `unit` ('line' or 'row'), iteration, `position` for progress."""

    kind = ""
    unit = "line"

    def __init__(self, path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> None:
        self.path = path
        self.max_row_bytes = max_row_bytes
        self.size = path.stat().st_size
        self._f: Any = None

    @property
    def label(self) -> str:
        """How messages name the source (the file name)."""
        return self.path.name

    @property
    def source(self) -> str:
        """Where the rows came from, as stored with the dataset."""
        return str(self.path.resolve())

    @property
    def position(self) -> int:
        """Bytes read so far (approximate; for progress only)."""
        try:
            return self._f.tell() if self._f is not None and not self._f.closed else self.size
        except (OSError, ValueError):
            return 0

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        raise NotImplementedError

    def error(self, line: int | None, reason: str, text: str | bytes = "") -> DataError:
        return DataError(
            self.path, line, reason, excerpt(text) if text else "", unit=self.unit, label=self.label
        )

    def _too_big(self, n: int) -> str:
        return (
            f"the row is {n / 1e6:.1f} MB, over the {self.max_row_bytes / 1e6:.1f} MB limit per row"
        )


class JsonlReader(Reader):
    kind = "jsonl"

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        # decode + raw_decode skips json.loads' encoding detection: the hot path of an import
        raw_decode, limit = json.JSONDecoder().raw_decode, self.max_row_bytes
        with open(self.path, "rb") as f:
            self._f = f
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[3:]
                if len(raw) > limit:
                    yield lineno, Bad(self._too_big(len(raw)), excerpt(raw[:200]))
                    continue
                try:
                    text = raw.decode("utf-8")
                    obj, end = raw_decode(text)
                    if end < len(text) and text[end:].strip():
                        raise json.JSONDecodeError("Extra data", text, end)
                except UnicodeDecodeError as exc:
                    yield lineno, Bad(_utf8_reason(exc), excerpt(raw))
                    continue
                except json.JSONDecodeError as exc:
                    bad = self._bad_line(lineno, text, exc)
                    if bad is not None:
                        yield lineno, bad
                    continue
                if type(obj) is dict:
                    yield lineno, obj
                else:
                    yield (
                        lineno,
                        Bad(f"expected a JSON object per line, got {_kind(obj)}", excerpt(raw)),
                    )

    def _bad_line(self, lineno: int, text: str, exc: json.JSONDecodeError) -> Bad | None:
        """None for a blank line, else why the line is not JSON."""
        if not text.strip():
            return None
        pos = exc.pos
        return Bad(_json_reason(exc), _around(text, pos) if len(text) > EXCERPT else excerpt(text))


def _kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    return f"a {type(obj).__name__}"


ROW_LIST_KEYS = ("data", "rows", "examples", "records", "items", "train", "instances", "samples")


class JsonReader(Reader):
    """A JSON array of objects (streamed), or an object holding such an array (loaded)."""

    kind = "json"
    CHUNK = 1 << 20

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        with open(self.path, "rb") as f:
            self._f = f
            head = f.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
            f.seek(0)
            if head.startswith(b"{"):
                yield from self._object(f)
            else:
                yield from self._array(f)

    def _object(self, f) -> Iterator[tuple[int, dict | Bad]]:
        try:
            doc = json.loads(f.read())
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise self.error(line, _utf8_reason(exc)) from None
        except json.JSONDecodeError as exc:
            raise self.error(
                exc.lineno, _json_reason(exc), exc.doc.splitlines()[exc.lineno - 1]
            ) from None
        lists = {
            k: v for k, v in doc.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        key = next((k for k in ROW_LIST_KEYS if k in lists), None) or (
            next(iter(lists)) if len(lists) == 1 else None
        )
        if key is None:
            keys = ", ".join(repr(k) for k in doc) or "none"
            raise DataError(
                self.path, None,
                f"holds a JSON object without one list of rows (keys: {keys}); expected an "
                'array of objects, or an object with one, e.g. {"data": [...]}',
            )  # fmt: skip
        for i, obj in enumerate(doc[key], 1):
            yield (
                i,
                obj
                if isinstance(obj, dict)
                else Bad(f"item {i} of {key!r} is {_kind(obj)}, expected an object"),
            )

    def _array(self, f) -> Iterator[tuple[int, dict | Bad]]:
        decoder = json.JSONDecoder()
        utf8 = codecs.getincrementaldecoder("utf-8")()
        buf, pos, line, eof = "", 0, 1, False  # `line` is the line number at buf[pos]
        chunk = self.CHUNK

        def fill() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            data = f.read(chunk)
            try:
                text = utf8.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                bad_line = line + buf.count("\n", pos) + exc.object[: exc.start].count(b"\n")
                raise self.error(bad_line, _utf8_reason(exc)) from None
            if pos:
                buf, pos = buf[pos:], 0
            buf += text
            eof = not data
            return True

        def skip_ws() -> None:
            nonlocal pos, line
            while True:
                n = len(buf)
                while pos < n and buf[pos] in " \t\r\n":
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < n or not fill():
                    return

        fill()
        if buf.startswith("\ufeff"):
            pos = 1
        skip_ws()
        if not buf[pos : pos + 1] == "[":
            raise self.error(
                line,
                "expected a JSON array ('[') or object ('{') at the start",
                buf[pos : pos + 60],
            )
        pos += 1
        index = 0
        while True:
            skip_ws()
            if pos >= len(buf):
                raise self.error(line, "the JSON array is not closed (the file ends before ']')")
            if buf[pos] == "]":
                pos += 1
                skip_ws()
                if pos < len(buf):
                    raise self.error(
                        line, "unexpected text after the closing ']'", buf[pos : pos + 60]
                    )
                return
            if index:
                if buf[pos] != ",":
                    raise self.error(line, "expected ',' between array items", buf[pos : pos + 60])
                pos += 1
                skip_ws()
            start_line = line
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as exc:
                    if eof:
                        err_line = line + buf.count("\n", pos, exc.pos)
                        bol = buf.rfind("\n", 0, exc.pos) + 1
                        raise self.error(
                            err_line, f"not valid JSON ({exc.msg})", buf[bol : exc.pos + 40]
                        ) from None
                # the item runs past the buffer: read more (bigger chunks for big items)
                if len(buf) - pos > self.max_row_bytes + chunk:
                    raise self.error(start_line, self._too_big(len(buf) - pos))
                if len(buf) - pos >= chunk:
                    chunk = min(chunk * 2, 1 << 26)
                fill()
            line += buf.count("\n", pos, end)
            size = end - pos
            pos = end
            index += 1
            if size > self.max_row_bytes:
                yield start_line, Bad(self._too_big(size))
            elif isinstance(obj, dict):
                yield start_line, obj
            else:
                yield start_line, Bad(f"array item {index} is {_kind(obj)}, expected an object")


class CsvReader(Reader):
    """CSV or TSV with a header row; quoted fields may hold commas and newlines."""

    kind = "csv"

    def __init__(
        self, path: Path, max_row_bytes: int = MAX_ROW_BYTES, delimiter: str | None = None
    ):
        super().__init__(path, max_row_bytes)
        self.delimiter = delimiter
        if delimiter == "\t":
            self.kind = "tsv"

    def _lines(self, f, bad: set[int]) -> Iterator[str]:
        for n, raw in enumerate(f, 1):
            self._physical = n
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if len(bad) < 1_000_000:
                    bad.add(n)
                self._utf8_error = (n, _utf8_reason(exc))
                yield raw.decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        csv.field_size_limit(min(sys.maxsize, (1 << 31) - 1))
        bad_lines: set[int] = set()
        self._utf8_error = None
        with open(self.path, "rb") as f:
            self._f = f
            first = f.readline()
            f.seek(0)
            if first.startswith(codecs.BOM_UTF8):
                f.read(3)
            delimiter = self.delimiter or _sniff_delimiter(first.decode("utf-8", errors="replace"))
            if delimiter == "\t":
                self.kind = "tsv"
            self._physical = 0
            reader = csv.reader(self._lines(f, bad_lines), delimiter=delimiter, strict=True)
            header = self._header(reader, bad_lines)
            if header is None:
                return
            width = len(header)
            last = 1
            while True:
                start = self._physical + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise self.error(start, f"not valid CSV ({exc})") from None
                end = self._physical
                if not row or (len(row) == 1 and not row[0].strip()):
                    last = end
                    continue
                start = last + 1
                last = end
                if bad_lines and any(n in bad_lines for n in range(start, end + 1)):
                    n = next(n for n in range(start, end + 1) if n in bad_lines)
                    yield n, Bad(self._utf8_error[1] if self._utf8_error else "not valid UTF-8")
                    continue
                if len(row) != width:
                    yield (
                        start,
                        Bad(
                            f"has {len(row)} fields but the header has {width}",
                            excerpt(delimiter.join(row)),
                        ),
                    )
                    continue
                size = sum(len(c) for c in row)
                if size > self.max_row_bytes:
                    yield start, Bad(self._too_big(size))
                    continue
                yield start, dict(zip(header, row, strict=True))

    def _header(self, reader, bad_lines: set[int]) -> list[str] | None:
        try:
            header = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise self.error(1, f"not valid CSV ({exc})") from None
        if bad_lines:
            raise self.error(1, "the header is not valid UTF-8 (save the file as UTF-8)")
        names = [h.strip() or f"column{i}" for i, h in enumerate(header, 1)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise self.error(1, f"the header repeats column name(s) {', '.join(map(repr, dupes))}")
        return names


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


class ParquetReader(Reader):
    kind = "parquet"
    unit = "row"

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(self.path, None, f"is not a readable Parquet file ({exc})") from None
        self._done = 0
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=8192):
                for rec in batch.to_pylist():
                    n += 1
                    yield n, rec
                self._done += batch.nbytes
        except pa.ArrowException as exc:
            raise DataError(self.path, n + 1, f"cannot be read ({exc})", unit="row") from None

    @property
    def position(self) -> int:
        return min(getattr(self, "_done", 0), self.size)


def _arrow_rows(batches, max_rows: int = 1024) -> Iterator[dict]:
    """Rows of Arrow record batches, a slice at a time (a batch may be large)."""
    for batch in batches:
        for start in range(0, batch.num_rows, max_rows):
            yield from batch.slice(start, max_rows).to_pylist()


def is_hub_id(source: Any) -> bool:
    return isinstance(source, str) and source.startswith("hf://")


HF_STATE, HF_DICT = "state.json", "dataset_dict.json"


def hf_splits(folder: Path) -> list[str] | None:
    """The splits of a `DatasetDict.save_to_disk` folder, None for a `Dataset` folder;
    DataError for a folder that is neither."""
    if (folder / HF_DICT).is_file():
        try:
            splits = json.loads((folder / HF_DICT).read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(folder, None, f"has an unreadable {HF_DICT} ({exc})") from None
        return [str(s) for s in splits]
    if (folder / HF_STATE).is_file():
        return None
    raise DataError(
        folder, None,
        f"is a folder without {HF_STATE} or {HF_DICT}: give a file (JSONL, JSON, CSV, TSV, "
        "Parquet) or a folder written by Hugging Face datasets' save_to_disk",
    )  # fmt: skip


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and ((path / HF_STATE).is_file() or (path / HF_DICT).is_file())


def pick_split(where: str, splits: list[str], split: str | None) -> str:
    """The split to read: `split` when given (and present), else the only one there is."""
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise UserError(f"{where} holds the splits {', '.join(splits)}: choose one with --split")
    if split not in splits:
        raise UserError(f"{where} has no split {split!r} (it has: {', '.join(splits)})")
    return split


class HfDiskReader(Reader):
    """A folder written by `datasets` (`Dataset.save_to_disk`, or a `DatasetDict` and a
    split): its Arrow stream files, read a record batch at a time with pyarrow alone."""

    kind = "hf"
    unit = "row"

    def __init__(self, path: Path, max_row_bytes: int = MAX_ROW_BYTES, split: str | None = None):
        splits = hf_splits(path)
        self.root, self.split = path, None
        folder = path
        if splits is not None:
            self.split = pick_split(path.name, splits, split)
            folder = path / self.split
        elif split is not None:
            raise UserError(
                f"{path.name} holds one dataset (saved by Dataset.save_to_disk), not splits: "
                "leave out --split"
            )
        try:
            state = json.loads((folder / HF_STATE).read_text(encoding="utf-8"))
            files = [folder / f["filename"] for f in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(folder, None, f"has no readable {HF_STATE} ({exc})") from None
        if state.get("_indices_data_files"):
            raise DataError(
                folder, None,
                "was saved with an indices mapping (an old datasets version): load it, then "
                "save it again with flatten_indices()",
            )  # fmt: skip
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(folder, None, f"lacks its data file(s) {', '.join(missing)}")
        self.path, self.files = folder, files
        self.max_row_bytes = max_row_bytes
        self.size = sum(f.stat().st_size for f in files)
        self._f = None
        self._done = 0

    @property
    def label(self) -> str:
        return f"{self.root.name} [{self.split}]" if self.split else self.root.name

    @property
    def source(self) -> str:
        root = str(self.root.resolve())
        return f"{root} (split {self.split})" if self.split else root

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        import pyarrow as pa

        n = 0
        for file in self.files:
            try:
                with pa.memory_map(str(file)) as source:
                    stream = pa.ipc.open_stream(source)
                    for batch in stream:
                        for rec in _arrow_rows([batch]):
                            n += 1
                            yield n, rec
                        self._done += batch.nbytes
            except pa.ArrowInvalid as exc:
                raise DataError(
                    file, n + 1, f"cannot be read as an Arrow stream ({exc})", unit="row"
                ) from None

    @property
    def position(self) -> int:
        return min(self._done, self.size)


class HfHubReader(Reader):
    """A dataset on the Hugging Face Hub (`hf://datasets/ORG/NAME`), streamed with the
    `datasets` library (the `hf` extra): never downloaded whole first."""

    kind = "hf"
    unit = "row"

    def __init__(
        self,
        source: str,
        max_row_bytes: int = MAX_ROW_BYTES,
        split: str | None = None,
        revision: str | None = None,
    ) -> None:
        repo = source.removeprefix(HUB_PREFIX).strip("/")
        if not source.startswith(HUB_PREFIX) or repo.count("/") != 1 or not all(repo.split("/")):
            raise UserError(
                f"{source!r} is not a Hub dataset id: write hf://datasets/ORG/NAME "
                "(e.g. hf://datasets/tatsu-lab/alpaca)"
            )
        self.id, self.repo, self.split, self.revision = source, repo, split, revision
        self.path = Path(repo)  # only its name is shown
        self.max_row_bytes = max_row_bytes
        self.size = 0  # unknown: progress counts rows
        self._f = None
        self.stream = self._open()

    @property
    def label(self) -> str:
        return self.id + (f" [{self.split}]" if self.split else "")

    @property
    def source(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.id}{rev}" + (f" (split {self.split})" if self.split else "")

    def _open(self) -> Any:
        """The streaming dataset; UserError when offline, unreachable, unknown or not split."""
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise UserError(
                f"{self.id} is on the Hugging Face Hub, but this machine is offline "
                "(HF_HUB_OFFLINE=1): where you are online, save it with "
                f"datasets.load_dataset({self.repo!r}).save_to_disk(DIR), then import DIR"
            )
        try:
            import datasets
        except ImportError:
            raise UserError(
                "importing from the Hugging Face Hub needs the datasets library: "
                "pip install 'kdstudio[hf]'"
            ) from None
        try:
            stream = datasets.load_dataset(
                self.repo, split=self.split, revision=self.revision, streaming=True
            )
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown repo or split
            reason = " ".join(str(exc).split())[:400] or type(exc).__name__
            raise UserError(f"cannot open {self.label} on the Hugging Face Hub: {reason}") from None
        if isinstance(stream, dict):  # no --split: an IterableDatasetDict
            self.split = pick_split(self.id, list(stream), None)
            stream = stream[self.split]
        return stream

    def __iter__(self) -> Iterator[tuple[int, dict | Bad]]:
        try:
            yield from enumerate(self.stream, 1)
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.label}: reading from the Hub failed ({exc})") from None

    @property
    def position(self) -> int:
        return 0


def sniff(path: Path) -> str:
    """The container format of `path` from its extension and first bytes."""
    if path.is_dir():
        return "hf"
    ext = path.suffix.lower()
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext == ".csv":
        return "csv"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(codecs.BOM_UTF8).lstrip()
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        first, _, rest = text.partition(b"\n")
        try:
            obj = json.loads(first)
        except ValueError:
            return "jsonl" if ext == ".jsonl" else "json"
        if ext == ".json" and not rest.strip() and isinstance(obj, dict):
            lists = [
                k for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)
            ]
            if lists and not set(lists) & {"messages", "conversations", "conversation"}:
                return "json"
        return "jsonl"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "csv"


def open_reader(
    path: Path | str,
    container: str | None,
    max_row_bytes: int = MAX_ROW_BYTES,
    *,
    split: str | None = None,
    revision: str | None = None,
) -> Reader:
    """A reader for `path` (a file, a saved `datasets` folder, or `hf://datasets/ORG/NAME`);
    `container` None means detect it. `split` and `revision` apply to Hugging Face sources."""
    if is_hub_id(path):
        return HfHubReader(path, max_row_bytes, split, revision)
    path = Path(path)
    container = container or sniff(path)
    if container == "hf":
        if not path.is_dir():
            raise UserError(
                f"--format hf expects a folder written by datasets' save_to_disk; {path} is a file"
            )
        if revision is not None:
            raise UserError("--revision applies to a Hub dataset (hf://datasets/ORG/NAME)")
        return HfDiskReader(path, max_row_bytes, split)
    if split is not None or revision is not None:
        option = "--split" if split is not None else "--revision"
        raise UserError(
            f"{option} applies to a Hugging Face dataset (a save_to_disk folder or "
            f"hf://datasets/ORG/NAME), not to {path.name}"
        )
    if container == "jsonl":
        return JsonlReader(path, max_row_bytes)
    if container == "json":
        return JsonReader(path, max_row_bytes)
    if container == "csv":
        return CsvReader(
            path, max_row_bytes, "\t" if path.suffix.lower() in (".tsv", ".tab") else None
        )
    if container == "tsv":
        return CsvReader(path, max_row_bytes, "\t")
    if container == "parquet":
        return ParquetReader(path, max_row_bytes)
    raise UserError(f"unknown file format {container!r} (known: {', '.join(CONTAINERS)})")
