"""`kdstudio collect ...` and `kdstudio outputs list ...`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdstudio.cli import add_config_options, config_from_args, finite_float, stop_on_signals
from kdstudio.errors import UserError

METAVARS = {
    "teacher": "NAME",
    "dataset": "NAME",
    "name": "C",
    "samples": "N",
    "max_tokens": "N",
    "temperature": "T",
    "top_p": "P",
    "seed": "SEED",
    "stop": "TEXT",
    "top_logprobs": "K",
    "concurrency": "N",
    "max_retries": "N",
    "timeout": "S",
    "budget": "USD",
    "batch_poll_s": "S",
    "local_batch_size": "N",
    "limit": "N",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="collect teacher answers for a dataset (re-running the same command resumes)",
        description="Send every prompt of a dataset to a teacher and store each answer as it "
        "arrives. Re-running the same command resumes; Ctrl-C stops after the requests in "
        "flight are stored (exit 130).",
    )
    from kdstudio.collect.config import CollectConfig

    add_config_options(
        p,
        CollectConfig,
        flags={"batch_poll_s": ["--poll"], "adaptive": ["--fixed-concurrency"]},
        metavars=METAVARS,
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the cost estimate and exit without sending anything",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=cmd_collect)

    o = sub.add_parser("outputs", help="browse collected teacher answers")
    osub = o.add_subparsers(dest="outputs_command", metavar="ACTION")
    ls = osub.add_parser("list", help="list collections, or the items of one")
    ls.add_argument("collection", nargs="?", help="collection name (omit to list collections)")
    ls.add_argument("--search", metavar="TEXT", help="full-text search in prompts and answers")
    ls.add_argument("--status", choices=("queued", "in_flight", "retrying", "done", "failed"))
    ls.add_argument("--review", choices=("pending", "accepted", "rejected"))
    ls.add_argument("--min-chars", type=int, default=None, metavar="N")
    ls.add_argument("--max-chars", type=int, default=None, metavar="N")
    lp = ls.add_mutually_exclusive_group()
    lp.add_argument("--with-logprobs", dest="has_logprobs", action="store_true", default=None)
    lp.add_argument("--without-logprobs", dest="has_logprobs", action="store_false")
    ls.add_argument(
        "--min-confidence",
        type=finite_float,
        default=None,
        metavar="P",
        help="geometric-mean token probability >= P",
    )
    ls.add_argument("--max-confidence", type=finite_float, default=None, metavar="P")
    ls.add_argument(
        "--min-score", type=finite_float, default=None, metavar="S", help="curation score >= S"
    )
    ls.add_argument("--max-score", type=finite_float, default=None, metavar="S")
    ls.add_argument(
        "--decider",
        metavar="WHO",
        help="decided by: person, check, judge, best, or one by name (check:exact)",
    )
    ls.add_argument(
        "--order", choices=("idx", "confidence", "length", "cost", "score"), default="idx"
    )
    ls.add_argument("--limit", type=int, default=20, metavar="N")
    ls.add_argument("--offset", type=int, default=0, metavar="N")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    ls.set_defaults(func=cmd_outputs_list)

    rv = osub.add_parser("review", help="accept, reject or reset items (as the window's A/R keys)")
    rv.add_argument("collection")
    rv.add_argument("verdict", choices=("accept", "reject", "pending"))
    rv.add_argument(
        "rows", nargs="+", type=int, metavar="ROW", help="row numbers (# in `outputs list`)"
    )
    rv.add_argument("--sample", type=int, default=0, metavar="N")
    rv.add_argument("--reason", metavar="TEXT", help="why (kept with the decision)")
    rv.set_defaults(func=cmd_outputs_review)

    ed = osub.add_parser(
        "edit", help="replace an answer's text, read from stdin (the original is kept)"
    )
    ed.add_argument("collection")
    ed.add_argument("row", type=int, metavar="ROW")
    ed.add_argument("--sample", type=int, default=0, metavar="N")
    ed.add_argument("--revert", action="store_true", help="go back to the teacher's original text")
    ed.set_defaults(func=cmd_outputs_edit)

    ex = osub.add_parser("export", help="write finished answers as chat JSONL (edits applied)")
    ex.add_argument("collection")
    ex.add_argument("--out", required=True, type=Path, metavar="FILE")
    ex.add_argument("--review", choices=("pending", "accepted", "rejected"))
    ex.add_argument("--search", metavar="TEXT")
    ex.set_defaults(func=cmd_outputs_export)

    from kdstudio.commands.curate import register_outputs

    register_outputs(osub)


def cmd_collect(args: argparse.Namespace, ctx) -> int:
    from kdstudio.collect import CollectConfig, collect, estimate_cost
    from kdstudio.events import CancelToken, ConsoleSink

    config = config_from_args(CollectConfig, args)
    ws = ctx.ws
    if args.estimate:
        estimate = estimate_cost(config, ws)
        if args.json:
            ctx.print_json(estimate.__dict__)
        else:
            print(estimate.line())
        return 0
    cancel = CancelToken()
    with stop_on_signals(cancel, "waiting for the requests in flight and storing them"):
        summary = collect(config, ws, ConsoleSink(), cancel)
    if args.json:
        ctx.print_json(summary.to_dict())
    return 0


def _filter(args: argparse.Namespace) -> Any:
    from kdstudio.collect.store import ItemFilter

    return ItemFilter(
        status=args.status,
        review=args.review,
        search=args.search,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        has_logprobs=args.has_logprobs,
        min_confidence=args.min_confidence,
        max_confidence=args.max_confidence,
        min_score=args.min_score,
        max_score=args.max_score,
        decider=args.decider,
        order=args.order,
    )


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_outputs_list(args: argparse.Namespace, ctx) -> int:
    from kdstudio.collect import store as outputs

    ws = ctx.ws
    if args.collection is None:
        return _list_collections(args, ctx)
    if args.limit < 0 or args.offset < 0:
        raise UserError("--limit and --offset must be >= 0")
    filt = _filter(args)
    total = outputs.count_items(ws, args.collection, filt)
    items = outputs.list_items(ws, args.collection, filt, offset=args.offset, limit=args.limit)
    if args.json:
        ctx.print_json(
            {
                "collection": args.collection,
                "total": total,
                "offset": args.offset,
                "items": [i.to_dict() for i in items],
            }
        )
        return 0
    rows = []
    for i in items:
        conf = f"{i.confidence:.2f}" if i.confidence is not None else "-"
        answer = i.response if i.status == "done" else (i.error or "")
        rows.append(
            [
                i.idx,
                i.sample,
                i.status,
                i.review + ("*" if i.edited else ""),
                "-" if i.score is None else f"{i.score:.2f}",
                i.decider or "-",
                i.completion_tokens or "-",
                conf,
                _short(i.prompt, 32),
                _short(answer, 40),
                _short(i.reason, 40),
            ]
        )
    ctx.print_table(
        [
            "IDX", "S", "STATUS", "REVIEW", "SCORE", "DECIDER", "TOKENS", "CONF", "PROMPT",
            "ANSWER / ERROR", "REASON",
        ],
        rows,
    )  # fmt: skip
    shown = f"{args.offset + 1}-{args.offset + len(items)}" if items else "none"
    counts = outputs.collection_status_counts(ws, args.collection)
    states = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "total")
    print(f"({shown} of {total} matching; collection: {states or 'empty'})")
    return 0


def _list_collections(args: argparse.Namespace, ctx) -> int:
    from kdstudio.collect import store as outputs
    from kdstudio.formatting import usd

    infos = outputs.list_collections(ctx.ws)
    if args.json:
        ctx.print_json([i.to_dict() for i in infos])
        return 0
    if not infos:
        print("no collections yet: start one with `kdstudio collect --teacher NAME --dataset NAME`")
        return 0
    rows = []
    for i in infos:
        c = i.counts
        rows.append(
            [
                i.name,
                i.teacher_name or "-",
                i.dataset_name or "-",
                i.status,
                f"{c['done']}/{c['total']}",
                c["failed"],
                usd(i.spend),
            ]
        )
    ctx.print_table(["NAME", "TEACHER", "DATASET", "STATUS", "DONE", "FAILED", "SPENT"], rows)
    return 0


def cmd_outputs_review(args: argparse.Namespace, ctx) -> int:
    from kdstudio.collect import store as outputs

    review = {"accept": "accepted", "reject": "rejected", "pending": "pending"}[args.verdict]
    ids = [outputs.row_id_for_index(ctx.ws, args.collection, idx) for idx in args.rows]
    for row_id in ids:
        outputs.set_review(ctx.ws, args.collection, row_id, args.sample, review, reason=args.reason)
    print(f"{review}: {len(ids)} item(s) of {args.collection!r}")
    return 0


def cmd_outputs_edit(args: argparse.Namespace, ctx) -> int:
    import sys

    from kdstudio.collect import store as outputs

    row_id = outputs.row_id_for_index(ctx.ws, args.collection, args.row)
    if args.revert:
        outputs.clear_edit(ctx.ws, args.collection, row_id, args.sample)
        print(f"row {args.row}: back to the teacher's original answer")
        return 0
    text = sys.stdin.read()
    if not text.strip():
        raise UserError("outputs edit reads the new answer from standard input, which was empty")
    item = outputs.get_item(ctx.ws, args.collection, row_id, args.sample).item
    outputs.set_review(ctx.ws, args.collection, row_id, args.sample, item.review, text.rstrip("\n"))
    print(f"row {args.row}: answer edited (the original is kept; --revert restores it)")
    return 0


def cmd_outputs_export(args: argparse.Namespace, ctx) -> int:
    from kdstudio.collect import store as outputs

    filt = outputs.ItemFilter(review=args.review, search=args.search)
    n = outputs.export_items(ctx.ws, args.collection, args.out, filt=filt)
    print(f"wrote {n} answer(s) of {args.collection!r} to {args.out}")
    return 0
