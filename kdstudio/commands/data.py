"""`kdstudio data import|list|show|export|remove`: prompt datasets."""

from __future__ import annotations

import argparse
import time
from typing import Any

SHOW_CHARS = 400  # a turn longer than this is cut in `data show` (unless --full)


def register(sub: argparse._SubParsersAction) -> None:
    from kdstudio.data.export import EXPORT_FORMATS
    from kdstudio.data.importer import FORMATS

    p = sub.add_parser("data", help="import, browse and export prompt datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    imp = dsub.add_parser(
        "import",
        help="import a JSONL, JSON, CSV/TSV or Parquet file, or a Hugging Face dataset",
        description="Import a file, a folder written by Hugging Face datasets' save_to_disk, or "
        "a Hub dataset (hf://datasets/ORG/NAME, when online) as a dataset. The format (OpenAI "
        "chat, ShareGPT, Alpaca, or a table with a prompt column) is detected from the content "
        "and reported; --map overrides which column holds what. The import is all or nothing.",
    )
    imp.add_argument(
        "file",
        help="a .jsonl, .json, .csv, .tsv or .parquet file, a save_to_disk folder, or "
        "hf://datasets/ORG/NAME",
    )
    imp.add_argument("--name", help="dataset name (default: from the file name)")
    imp.add_argument(
        "--split",
        metavar="SPLIT",
        help="the split of a DatasetDict folder or a Hub dataset (needed when it has several)",
    )
    imp.add_argument(
        "--revision", metavar="REV", help="a Hub dataset's branch, tag or commit (default: main)"
    )
    imp.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="file format or row schema (default: auto)",
    )
    imp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="say which column holds a field: prompt, system, response, id, messages, "
        "conversations, instruction, input, history, meta (repeatable)",
    )
    imp.add_argument(
        "--skip-bad", action="store_true", help="import the good rows and list the bad lines"
    )
    imp.add_argument("--dedupe", action="store_true", help="keep only the first of identical rows")
    imp.add_argument(
        "--as-collection",
        metavar="NAME",
        help="also store the answers the file carries as a collection of teacher outputs",
    )
    imp.add_argument(
        "--max-row-mb",
        type=float,
        default=1.0,
        metavar="MB",
        help="largest row accepted (default 1)",
    )
    imp.add_argument("--json", action="store_true", help="print the result as one JSON document")
    imp.set_defaults(func=cmd_import)

    ls = dsub.add_parser("list", help="list datasets")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    ls.set_defaults(func=cmd_list)

    show = dsub.add_parser("show", help="show a dataset's stats and first rows")
    show.add_argument("name")
    show.add_argument("--limit", type=int, default=5, metavar="N", help="rows to show (default 5)")
    show.add_argument(
        "--offset", type=int, default=0, metavar="N", help="first row to show (default 0)"
    )
    show.add_argument(
        "--search", metavar="TEXT", help="only rows whose prompt or reference has these words"
    )
    show.add_argument("--full", action="store_true", help="do not shorten long turns")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(func=cmd_show)

    exp = dsub.add_parser("export", help="write a dataset to a file")
    exp.add_argument("name")
    exp.add_argument("--out", required=True, metavar="FILE")
    exp.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default=None,
        help="default: from the file name (.parquet, .csv, else kdstudio JSONL)",
    )
    exp.set_defaults(func=cmd_export)

    der = dsub.add_parser(
        "derive",
        help="a new dataset from some rows of another (which is not changed)",
        description="A new dataset made from some of PARENT's rows, linked to it. Rows are "
        "kept when they are in --rows (all when absent), not in --drop-rows, and match "
        "--search. Row numbers are those `data show` prints, e.g. 0-99,150.",
    )
    der.add_argument("parent")
    der.add_argument("name")
    der.add_argument("--rows", metavar="SPEC", help="keep only these rows, e.g. 0-99,150")
    der.add_argument("--drop-rows", metavar="SPEC", help="leave these rows out, e.g. 3,7-9")
    der.add_argument(
        "--search", metavar="TEXT", help="only rows whose prompt or reference has these words"
    )
    der.add_argument("--dedupe", action="store_true", help="keep the first of identical rows")
    der.add_argument("--note", metavar="TEXT", help="a note stored with the new dataset")
    der.add_argument("--json", action="store_true", help="print one JSON document")
    der.set_defaults(func=cmd_derive)

    rm = dsub.add_parser("remove", help="remove a dataset (refused while a collection uses it)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)


def cmd_import(args: argparse.Namespace, ctx) -> int:
    from kdstudio.data import import_dataset
    from kdstudio.data.schema import parse_map_args
    from kdstudio.errors import UserError
    from kdstudio.events import ConsoleSink

    if args.max_row_mb <= 0:
        raise UserError("--max-row-mb must be more than 0")
    result = import_dataset(
        ctx.ws,
        args.file,
        name=args.name,
        fmt=args.format,
        split=args.split,
        revision=args.revision,
        mapping=parse_map_args(args.map),
        skip_bad=args.skip_bad,
        dedupe=args.dedupe,
        as_collection=args.as_collection,
        sink=ConsoleSink(quiet=args.json),
        max_row_bytes=int(args.max_row_mb * 1_000_000),
    )
    if args.json:
        ctx.print_json(result.to_dict())
        return 0
    if result.skipped:
        print(result.describe_skipped())
    print(f"see it with: kdstudio data show {result.name}")
    return 0


def cmd_list(args: argparse.Namespace, ctx) -> int:
    from kdstudio.data import list_datasets

    datasets = list_datasets(ctx.ws)
    if args.json:
        ctx.print_json([d.to_dict() for d in datasets])
        return 0
    if not datasets:
        print("no datasets yet: import one with `kdstudio data import FILE`")
        return 0
    rows = []
    for d in datasets:
        refs = d.stats.get("with_reference", 0)
        rows.append(
            [
                d.name,
                f"{d.n_rows:,}",
                f"{refs:,}",
                d.format or "",
                d.parent or "-",
                _when(d.created_at),
            ]
        )
    ctx.print_table(["NAME", "ROWS", "ANSWERS", "FORMAT", "PARENT", "CREATED"], rows)
    return 0


def cmd_show(args: argparse.Namespace, ctx) -> int:
    from kdstudio.data import store
    from kdstudio.data.importer import plural

    info = store.get_dataset(ctx.ws, args.name)
    rows = store.page(ctx.ws, info, args.offset, max(args.limit, 0), search=args.search)
    if args.json:
        doc: dict[str, Any] = {"dataset": info.to_dict(), "rows": [r.to_dict() for r in rows]}
        if args.search:
            doc["matches"] = store.count(ctx.ws, info, search=args.search)
        ctx.print_json(doc)
        return 0
    for line in describe(info):
        print(line)
    if args.search:
        n = store.count(ctx.ws, info, search=args.search)
        print(f"{plural(n, 'row')} {'matches' if n == 1 else 'match'} {args.search!r}")
    for r in rows:
        print()
        print(f"#{r.idx}" + (f"  id {r.row_key}" if r.row_key else ""))
        for m in r.messages:
            _turn(m["role"], m["content"], args.full)
        if r.reference is not None:
            _turn("reference", r.reference, args.full)
        if r.meta:
            _turn("other", ", ".join(f"{k}={v!r}" for k, v in r.meta.items()), args.full)
    if not rows:
        print("\n(no rows" + (" match" if args.search else " here") + ")")
    elif args.offset + len(rows) < info.n_rows and not args.search:
        print(
            f"\n({info.n_rows - args.offset - len(rows):,} more rows; see them with --offset/--limit)"
        )
    return 0


def describe(info) -> list[str]:
    """A few lines that summarise a dataset and its stats for a person."""
    from kdstudio.data.importer import plural

    s = info.stats
    origin = f"derived from {info.parent!r}" if info.parent else f"from {info.source}"
    lines = [
        f"dataset {info.name!r}: {plural(info.n_rows, 'row')} ({info.format}), {origin}, "
        f"created {_when(info.created_at)}"
    ]
    if not s:
        return lines
    roles = ", ".join(f"{k} {v:,}" for k, v in s.get("roles", {}).items())
    lines.append(
        f"  {s.get('with_system', 0):,} with a system prompt, {s.get('with_reference', 0):,} with a "
        f"reference answer, {s.get('multi_turn', 0):,} multi-turn; rows containing each role: {roles}"
    )
    c = s.get("chars", {})
    about = "" if c.get("exact") else "~"  # older workspaces stored bucket bounds
    lines.append(
        f"  length in characters: mean {c.get('mean', 0):,}, median {about}{c.get('p50', 0):,}, "
        f"p90 {about}{c.get('p90', 0):,}, max {c.get('max', 0):,}; about "
        f"{s.get('approx_tokens', 0):,} tokens in all (chars/4)"
    )
    dup = s.get("duplicates", 0)
    lines.append(
        f"  {plural(dup, 'duplicate row')}" + (" (re-import with --dedupe to drop them)" if dup else "")
        + (f"; {s['skipped']:,} bad lines were skipped at import" if s.get("skipped") else "")
    )  # fmt: skip
    if info.mapping:
        cols = ", ".join(f"{k}={v!r}" for k, v in info.mapping.items())
        lines.append(f"  columns: {cols}")
    return lines


def _turn(label: str, text: str, full: bool) -> None:
    if not full and len(text) > SHOW_CHARS:
        text = (
            text[:SHOW_CHARS] + f"… [{len(text) - SHOW_CHARS:,} more characters; --full shows all]"
        )
    lines = text.splitlines() or [""]
    print(f"  {label + ':':<11}{lines[0]}")
    for line in lines[1:]:
        print(f"  {'':<11}{line}")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_export(args: argparse.Namespace, ctx) -> int:
    from kdstudio.data import export_dataset
    from kdstudio.events import ConsoleSink

    export_dataset(ctx.ws, args.name, args.out, args.format, sink=ConsoleSink())
    return 0


def parse_rows(spec: str, option: str) -> list[int]:
    """Row numbers from "0-99,150": a clear error naming the option and the bad part."""
    from kdstudio.errors import UserError

    rows: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise UserError(
                f"{option}: {part!r} is not a row number or a range like 10-20"
            ) from None
        if a < 0 or b < a:
            raise UserError(f"{option}: {part!r} is not a range of row numbers (from <= to)")
        rows.extend(range(a, b + 1))
    return rows


def cmd_derive(args: argparse.Namespace, ctx) -> int:
    from kdstudio.data import derive

    info = derive(
        ctx.ws,
        args.parent,
        args.name,
        keep=parse_rows(args.rows, "--rows") if args.rows else None,
        drop=parse_rows(args.drop_rows, "--drop-rows") if args.drop_rows else None,
        search=args.search,
        dedupe=args.dedupe,
        note=args.note,
    )
    if args.json:
        ctx.print_json(info.to_dict())
        return 0
    print(f"dataset {info.name!r}: {info.n_rows:,} rows derived from {args.parent!r}")
    print(f"see it with: kdstudio data show {info.name}")
    return 0


def cmd_remove(args: argparse.Namespace, ctx) -> int:
    from kdstudio.data import delete_dataset

    delete_dataset(ctx.ws, args.name)
    print(f"removed dataset {args.name!r}")
    return 0
